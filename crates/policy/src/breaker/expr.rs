//! Breaker expressions: Traefik's functions and comparisons, with `!` and loose number typing.
//!
//! `LatencyAtQuantileMS(50.0) > 100 && !(NetworkErrorRatio() < 0.5) || RequestThreshold() >= 20`
//!
//! Unlike Traefik (Go's parser + oxy's strict types), integers and floats are accepted wherever a
//! number fits, the function may stand on either side of a comparison, and `!` exists.
//!
//! Bounded as rules are ([`crate::limits`]): length and nesting of `(` and `!` (the only
//! recursion); `a || b || c` is one flat list. The length also bounds the comparisons (each is
//! at least 20 bytes, so fewer than 3,300), below [`crate::limits::MAX_RULE_TERMS`].

use crate::limits::{MAX_RULE_BYTES, MAX_RULE_DEPTH};
use crate::rule::ParseError;

/// A statistic an expression reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// `LatencyAtQuantileMS(q)`: the q-th percentile latency in milliseconds.
    LatencyAtQuantileMs(f64),
    /// `NetworkErrorRatio()`: network errors / requests.
    NetworkErrorRatio,
    /// `ResponseCodeRatio(from, to, dividedFrom, dividedTo)`: codes in `[from, to)` over codes
    /// in `[dividedFrom, dividedTo)`; 0 when the divisor is 0.
    ResponseCodeRatio(u16, u16, u16, u16),
    /// `RequestThreshold()`: requests in the window.
    RequestThreshold,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// All hold (two or more).
    And(Vec<Cond>),
    /// At least one holds (two or more).
    Or(Vec<Cond>),
    /// Does not hold.
    Not(Box<Cond>),
    /// `metric op value` (normalised so the metric is on the left).
    Compare(Metric, Op, f64),
}

/// The statistics an expression is evaluated against.
pub trait Stats {
    /// The value of one metric.
    fn metric(&self, m: Metric) -> f64;
}

impl Cond {
    /// Evaluates against `stats`.
    pub fn eval(&self, stats: &dyn Stats) -> bool {
        match self {
            Cond::And(items) => items.iter().all(|c| c.eval(stats)),
            Cond::Or(items) => items.iter().any(|c| c.eval(stats)),
            Cond::Not(a) => !a.eval(stats),
            Cond::Compare(m, op, v) => {
                let x = stats.metric(*m);
                match op {
                    Op::Gt => x > *v,
                    Op::Ge => x >= *v,
                    Op::Lt => x < *v,
                    Op::Le => x <= *v,
                    Op::Eq => x == *v,
                    Op::Ne => x != *v,
                }
            }
        }
    }
}

/// Parses an expression; errors carry the 1-based column.
pub fn parse(input: &str) -> Result<Cond, ParseError> {
    let mut p = P {
        s: input,
        pos: 0,
        depth: 0,
    };
    if input.len() > MAX_RULE_BYTES {
        let mut at = MAX_RULE_BYTES;
        while !input.is_char_boundary(at) {
            at -= 1;
        }
        return Err(p.err(
            at,
            format!(
                "an expression may be at most {MAX_RULE_BYTES} bytes, this one is {}",
                input.len()
            ),
        ));
    }
    p.ws();
    if p.pos >= p.s.len() {
        return Err(p.err(p.pos, "empty expression"));
    }
    let c = p.or()?;
    p.ws();
    if p.pos < p.s.len() {
        return Err(p.err(p.pos, "expected '&&', '||' or end of expression"));
    }
    Ok(c)
}

enum Operand {
    Metric(Metric),
    Number(f64),
}

struct P<'a> {
    s: &'a str,
    pos: usize,
    /// Open parentheses and `!` around the current position.
    depth: usize,
}

impl P<'_> {
    fn err(&self, at: usize, msg: impl Into<String>) -> ParseError {
        let column = self.s.get(..at).map_or(at, |s| s.chars().count()) + 1;
        ParseError {
            column,
            message: msg.into(),
        }
    }

    fn rest(&self) -> &str {
        self.s.get(self.pos..).unwrap_or("")
    }

    fn ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.s.len() - trimmed.len();
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            return true;
        }
        false
    }

    /// One more level of nesting, at the `(` or `!` under the cursor.
    fn enter(&mut self) -> Result<(), ParseError> {
        if self.depth >= MAX_RULE_DEPTH {
            return Err(self.err(self.pos, format!("nesting deeper than {MAX_RULE_DEPTH}")));
        }
        self.depth += 1;
        Ok(())
    }

    fn or(&mut self) -> Result<Cond, ParseError> {
        let first = self.and()?;
        if !self.eat("||") {
            return Ok(first);
        }
        let mut items = vec![first];
        loop {
            items.push(self.and()?);
            if !self.eat("||") {
                return Ok(Cond::Or(items));
            }
        }
    }

    fn and(&mut self) -> Result<Cond, ParseError> {
        let first = self.unary()?;
        if !self.eat("&&") {
            return Ok(first);
        }
        let mut items = vec![first];
        loop {
            items.push(self.unary()?);
            if !self.eat("&&") {
                return Ok(Cond::And(items));
            }
        }
    }

    fn unary(&mut self) -> Result<Cond, ParseError> {
        self.ws();
        if self.rest().starts_with('!') && !self.rest().starts_with("!=") {
            self.enter()?;
            self.pos += 1;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Cond::Not(Box::new(inner)));
        }
        if self.rest().starts_with('(') {
            self.enter()?;
            self.pos += 1;
            let c = self.or()?;
            if !self.eat(")") {
                return Err(self.err(self.pos, "expected ')'"));
            }
            self.depth -= 1;
            return Ok(c);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Cond, ParseError> {
        self.ws();
        let left_at = self.pos;
        let left = self.operand()?;
        self.ws();
        let op_at = self.pos;
        let op = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            (">", Op::Gt),
            ("<", Op::Lt),
        ]
        .into_iter()
        .find(|(t, _)| self.rest().starts_with(t));
        let Some((tok, op)) = op else {
            return Err(self.err(op_at, "expected a comparison (>, >=, <, <=, ==, !=)"));
        };
        self.pos += tok.len();
        self.ws();
        let right_at = self.pos;
        let right = self.operand()?;
        match (left, right) {
            (Operand::Metric(m), Operand::Number(v)) => Ok(Cond::Compare(m, op, v)),
            (Operand::Number(v), Operand::Metric(m)) => {
                let flipped = match op {
                    Op::Gt => Op::Lt,
                    Op::Ge => Op::Le,
                    Op::Lt => Op::Gt,
                    Op::Le => Op::Ge,
                    o => o,
                };
                Ok(Cond::Compare(m, flipped, v))
            }
            (Operand::Metric(_), Operand::Metric(_)) => Err(self.err(
                right_at,
                "compare a function with a number, not with another function",
            )),
            (Operand::Number(_), Operand::Number(_)) => Err(self.err(
                left_at,
                "a comparison needs a function such as NetworkErrorRatio()",
            )),
        }
    }

    fn operand(&mut self) -> Result<Operand, ParseError> {
        self.ws();
        let start = self.pos;
        let c = self.rest().chars().next();
        match c {
            Some(c) if c.is_ascii_digit() || c == '-' || c == '.' => {
                Ok(Operand::Number(self.number()?))
            }
            Some(c) if c.is_ascii_alphabetic() => self.call(start),
            Some(c) => Err(self.err(
                start,
                format!("unexpected '{c}', expected a function or a number"),
            )),
            None => Err(self.err(start, "unexpected end of expression")),
        }
    }

    /// The number written at `at`. Messages quote it rather than print the `f64`: float
    /// formatting is about 20 KB of the filter.
    fn number_text(&self, at: usize) -> &str {
        let rest = self.s.get(at..).unwrap_or("");
        let len = rest
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && c == '-')))
            .map_or(rest.len(), |(i, _)| i);
        rest.get(..len).unwrap_or("")
    }

    fn number(&mut self) -> Result<f64, ParseError> {
        let start = self.pos;
        let text = self.number_text(start).to_string();
        self.pos += text.len();
        // Not `str::parse`: core's float parser is about 17 KB of the filter.
        crate::policy::number::parse(&text)
            .filter(|v| v.is_finite())
            .ok_or_else(|| {
                self.err(
                    start,
                    format!("invalid number '{}'", crate::excerpt::excerpt(&text)),
                )
            })
    }

    fn call(&mut self, start: usize) -> Result<Operand, ParseError> {
        let len = self
            .rest()
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(self.rest().len());
        let name = self.rest().get(..len).unwrap_or("").to_string();
        self.pos += len;
        if !self.eat("(") {
            return Err(self.err(
                self.pos,
                format!("expected '(' after {}", crate::excerpt::excerpt(&name)),
            ));
        }
        let mut args = Vec::new();
        if !self.eat(")") {
            loop {
                self.ws();
                args.push((self.pos, self.number()?));
                if self.eat(")") {
                    break;
                }
                if !self.eat(",") {
                    return Err(self.err(self.pos, "expected ',' or ')'"));
                }
            }
        }
        let arity = |n: usize| -> Result<(), ParseError> {
            if args.len() == n {
                Ok(())
            } else {
                let s = if n == 1 { "" } else { "s" };
                Err(self.err(
                    start,
                    format!(
                        "{} takes {n} argument{s}, got {}",
                        crate::excerpt::excerpt(&name),
                        args.len()
                    ),
                ))
            }
        };
        let code = |(at, v): (usize, f64)| -> Result<u16, ParseError> {
            if v.fract() == 0.0 && (0.0..=999.0).contains(&v) {
                Ok(v as u16)
            } else {
                let v = crate::excerpt::excerpt(self.number_text(at));
                Err(self.err(at, format!("expected a status code (0 to 999), got {v}")))
            }
        };
        let metric = match name.as_str() {
            "LatencyAtQuantileMS" => {
                arity(1)?;
                let (at, q) = args[0];
                if !(q > 0.0 && q <= 100.0) {
                    let q = crate::excerpt::excerpt(self.number_text(at));
                    return Err(self.err(at, format!("quantile must be above 0 and at most 100, got {q}")));
                }
                Metric::LatencyAtQuantileMs(q)
            }
            "NetworkErrorRatio" => {
                arity(0)?;
                Metric::NetworkErrorRatio
            }
            "RequestThreshold" => {
                arity(0)?;
                Metric::RequestThreshold
            }
            "ResponseCodeRatio" => {
                arity(4)?;
                let c = [code(args[0])?, code(args[1])?, code(args[2])?, code(args[3])?];
                if c[0] >= c[1] || c[2] >= c[3] {
                    return Err(self.err(start, "ResponseCodeRatio ranges need from < to (to is exclusive)"));
                }
                Metric::ResponseCodeRatio(c[0], c[1], c[2], c[3])
            }
            _ => {
                return Err(self.err(
                    start,
                    format!(
                        "unknown function '{}' (LatencyAtQuantileMS, NetworkErrorRatio, ResponseCodeRatio, RequestThreshold)",
                        crate::excerpt::excerpt(&name)
                    ),
                ))
            }
        };
        Ok(Operand::Metric(metric))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed {
        latency: f64,
        neterr: f64,
        total: f64,
        ratio: f64,
    }

    impl Stats for Fixed {
        fn metric(&self, m: Metric) -> f64 {
            match m {
                Metric::LatencyAtQuantileMs(_) => self.latency,
                Metric::NetworkErrorRatio => self.neterr,
                Metric::RequestThreshold => self.total,
                Metric::ResponseCodeRatio(..) => self.ratio,
            }
        }
    }

    fn eval(e: &str, s: &Fixed) -> bool {
        parse(e).unwrap_or_else(|err| panic!("{e}: {err}")).eval(s)
    }

    #[test]
    fn traefik_expressions_parse_and_evaluate() {
        let slow = Fixed {
            latency: 150.0,
            neterr: 0.0,
            total: 30.0,
            ratio: 0.0,
        };
        let fast = Fixed {
            latency: 20.0,
            neterr: 0.5,
            total: 30.0,
            ratio: 0.4,
        };
        assert!(eval("LatencyAtQuantileMS(50.0) > 100", &slow));
        assert!(!eval("LatencyAtQuantileMS(50.0) > 100", &fast));
        assert!(eval("NetworkErrorRatio() > 0.30", &fast));
        assert!(eval("ResponseCodeRatio(500, 600, 0, 600) > 0.25", &fast));
        assert!(eval(
            "RequestThreshold() >= 20 && NetworkErrorRatio() > 0.3",
            &fast
        ));
        assert!(!eval(
            "RequestThreshold() > 50 && NetworkErrorRatio() > 0.3",
            &fast
        ));
        assert!(eval(
            "LatencyAtQuantileMS(50.0) > 100 || NetworkErrorRatio() > 0.30",
            &fast
        ));
    }

    #[test]
    fn loose_numbers_not_and_either_side() {
        let s = Fixed {
            latency: 150.0,
            neterr: 0.5,
            total: 30.0,
            ratio: 0.0,
        };
        assert!(
            eval("LatencyAtQuantileMS(50) > 100.5", &s),
            "ints and floats both fit"
        );
        assert!(eval("NetworkErrorRatio() > 0", &s));
        assert!(
            eval("100 < LatencyAtQuantileMS(99.9)", &s),
            "number on the left flips the operator"
        );
        assert!(eval("!(NetworkErrorRatio() < 0.4)", &s));
        assert!(
            eval("!NetworkErrorRatio() == 0", &s),
            "! applies to the comparison"
        );
        for (op, want) in [
            (">", false),
            (">=", true),
            ("<", false),
            ("<=", true),
            ("==", true),
            ("!=", false),
        ] {
            assert_eq!(
                eval(&format!("RequestThreshold() {op} 30"), &s),
                want,
                "{op}"
            );
        }
    }

    #[test]
    fn precedence() {
        let t = Fixed {
            latency: 0.0,
            neterr: 1.0,
            total: 0.0,
            ratio: 0.0,
        };
        // true || (false && false) = true; (true || false) && false = false
        assert!(eval(
            "NetworkErrorRatio() > 0 || RequestThreshold() > 0 && RequestThreshold() > 0",
            &t
        ));
        assert!(!eval(
            "(NetworkErrorRatio() > 0 || RequestThreshold() > 0) && RequestThreshold() > 0",
            &t
        ));
    }

    #[test]
    fn errors_name_the_column() {
        let e = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(e(""), "column 1: empty expression");
        assert_eq!(
            e("LatencyAtQuantileMS(50.0)"),
            "column 26: expected a comparison (>, >=, <, <=, ==, !=)"
        );
        assert_eq!(
            e("LatencyAtQuantileMS(50.0) > "),
            "column 29: unexpected end of expression"
        );
        assert_eq!(
            e("Latency(50.0) > 1").split(" (").next().unwrap(),
            "column 1: unknown function 'Latency'"
        );
        assert_eq!(
            e("LatencyAtQuantileMS() > 1"),
            "column 1: LatencyAtQuantileMS takes 1 argument, got 0"
        );
        assert_eq!(
            e("LatencyAtQuantileMS(0) > 1"),
            "column 21: quantile must be above 0 and at most 100, got 0"
        );
        assert_eq!(
            e("NetworkErrorRatio() > 0.3 &&"),
            "column 29: unexpected end of expression"
        );
        assert_eq!(
            e("NetworkErrorRatio() > 0.3 & RequestThreshold() > 1"),
            "column 27: expected '&&', '||' or end of expression"
        );
        assert_eq!(
            e("ResponseCodeRatio(500, 600, 0) > 1"),
            "column 1: ResponseCodeRatio takes 4 arguments, got 3"
        );
        assert_eq!(
            e("ResponseCodeRatio(500.5, 600, 0, 600) > 1"),
            "column 19: expected a status code (0 to 999), got 500.5"
        );
        assert_eq!(
            e("1 > 2"),
            "column 1: a comparison needs a function such as NetworkErrorRatio()"
        );
        assert_eq!(e("(NetworkErrorRatio() > 0"), "column 25: expected ')'");
        assert_eq!(
            e("NetworkErrorRatio() > 1..2"),
            "column 23: invalid number '1..2'"
        );
    }
}
