//! Parser for Traefik's rule syntax: `Func(`arg`, "arg") && !(A() || B())`.
//!
//! Precedence follows Traefik (and Go): `!` binds tightest, then `&&`, then `||`. Strings are
//! Go raw strings (backticks) or interpreted strings (double quotes with Go escapes). Errors
//! carry the 1-based character column at which the problem was found.
//!
//! Bounded for hostile input ([`crate::limits`]): length, nesting (the only recursion), matcher
//! and argument counts. `a || b || c` parses into one flat list, so a long chain costs no stack
//! in parsing, compiling, matching or dropping.

use std::cell::Cell;
use std::fmt;

use crate::limits::{MAX_RULE_ARGS, MAX_RULE_BYTES, MAX_RULE_DEPTH, MAX_RULE_TERMS};

/// A parse error with the 1-based column (in characters) where it was detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based column, counted in characters.
    pub column: usize,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

/// A string argument and the column where it starts (for compile-time errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    /// The argument's value, escapes resolved.
    pub value: String,
    /// 1-based column of the opening quote.
    pub column: usize,
}

/// The syntax tree of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `a && b && …` (two or more)
    And(Vec<Expr>),
    /// `a || b || …` (two or more)
    Or(Vec<Expr>),
    /// `!a`
    Not(Box<Expr>),
    /// `Name(args…)`
    Call {
        /// The matcher's name as written.
        name: String,
        /// 1-based column of the name.
        column: usize,
        /// Its string arguments.
        args: Vec<Arg>,
    },
}

/// Parses a whole rule; trailing input is an error.
pub fn parse(input: &str) -> Result<Expr, ParseError> {
    let mut p = Parser {
        src: input,
        pos: 0,
        depth: 0,
        terms: 0,
        column: Cell::new((0, 0)),
    };
    if input.len() > MAX_RULE_BYTES {
        let mut at = MAX_RULE_BYTES;
        while !input.is_char_boundary(at) {
            at -= 1;
        }
        return Err(p.error_at(
            at,
            format!(
                "a rule may be at most {MAX_RULE_BYTES} bytes, this one is {}",
                input.len()
            ),
        ));
    }
    p.skip_ws();
    if p.at_end() {
        return Err(p.error_here("empty rule"));
    }
    let expr = p.or_expr()?;
    p.skip_ws();
    if !p.at_end() {
        return Err(p.error_here("expected '&&', '||' or end of rule"));
    }
    Ok(expr)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    /// Open parentheses and `!` around the current position.
    depth: usize,
    /// Matchers read so far.
    terms: usize,
    /// The last column computed, as (byte offset, characters before it): the parser moves
    /// forward, so counting on from there keeps columns linear. Counting from the start each
    /// time made a `Host` with 200,000 arguments take 13 s.
    column: Cell<(usize, usize)>,
}

impl Parser<'_> {
    fn column_of(&self, pos: usize) -> usize {
        let (at, chars) = self.column.get();
        let (from, base) = if pos >= at { (at, chars) } else { (0, 0) };
        let chars = base + self.src.get(from..pos).map_or(0, |s| s.chars().count());
        self.column.set((pos, chars));
        chars + 1
    }

    /// One more level of nesting, at the `(` or `!` under the cursor.
    fn enter(&mut self) -> Result<(), ParseError> {
        if self.depth >= MAX_RULE_DEPTH {
            return Err(self.error_here(format!("nesting deeper than {MAX_RULE_DEPTH}")));
        }
        self.depth += 1;
        Ok(())
    }

    fn error_at(&self, pos: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            column: self.column_of(pos),
            message: message.into(),
        }
    }

    fn error_here(&self, message: impl Into<String>) -> ParseError {
        self.error_at(self.pos, message)
    }

    fn rest(&self) -> &str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn or_expr(&mut self) -> Result<Expr, ParseError> {
        let first = self.and_expr()?;
        if !self.eat("||") {
            return Ok(first);
        }
        let mut items = vec![first];
        loop {
            items.push(self.and_expr()?);
            if !self.eat("||") {
                return Ok(Expr::Or(items));
            }
        }
    }

    fn and_expr(&mut self) -> Result<Expr, ParseError> {
        let first = self.unary()?;
        if !self.eat("&&") {
            return Ok(first);
        }
        let mut items = vec![first];
        loop {
            items.push(self.unary()?);
            if !self.eat("&&") {
                return Ok(Expr::And(items));
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        self.skip_ws();
        if self.rest().starts_with('!') && !self.rest().starts_with("!=") {
            self.enter()?;
            self.pos += 1;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        self.skip_ws();
        match self.peek() {
            None => Err(self.error_here("unexpected end of rule, expected a matcher")),
            Some('(') => {
                self.enter()?;
                self.pos += 1;
                let inner = self.or_expr()?;
                self.depth -= 1;
                self.skip_ws();
                if self.peek() == Some(')') {
                    self.pos += 1;
                    Ok(inner)
                } else if self.at_end() {
                    Err(self.error_here("unexpected end of rule, expected ')'"))
                } else {
                    Err(self.error_here("expected ')'"))
                }
            }
            Some(c) if c.is_ascii_alphabetic() => self.call(),
            Some(c) => Err(self.error_here(format!("unexpected '{c}', expected a matcher"))),
        }
    }

    fn call(&mut self) -> Result<Expr, ParseError> {
        let start = self.pos;
        if self.terms >= MAX_RULE_TERMS {
            return Err(self.error_here(format!("more than {MAX_RULE_TERMS} matchers in one rule")));
        }
        self.terms += 1;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == '_') {
            self.pos += 1;
        }
        let name = self.src.get(start..self.pos).unwrap_or("").to_string();
        let column = self.column_of(start);
        self.skip_ws();
        if self.peek() != Some('(') {
            return Err(self.error_here(format!(
                "expected '(' after {}",
                crate::excerpt::excerpt(&name)
            )));
        }
        self.pos += 1;
        let mut args = Vec::new();
        self.skip_ws();
        if self.peek() == Some(')') {
            self.pos += 1;
            return Ok(Expr::Call { name, column, args });
        }
        loop {
            self.skip_ws();
            if args.len() >= MAX_RULE_ARGS {
                return Err(self.error_here(format!(
                    "more than {MAX_RULE_ARGS} arguments to {}",
                    crate::excerpt::excerpt(&name)
                )));
            }
            args.push(self.string()?);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(')') => {
                    self.pos += 1;
                    return Ok(Expr::Call { name, column, args });
                }
                None => return Err(self.error_here("unexpected end of rule, expected ',' or ')'")),
                Some(_) => return Err(self.error_here("expected ',' or ')'")),
            }
        }
    }

    fn string(&mut self) -> Result<Arg, ParseError> {
        let start = self.pos;
        let column = self.column_of(start);
        match self.bump() {
            Some('`') => match self.rest().find('`') {
                Some(end) => {
                    let value = self.rest().get(..end).unwrap_or("").to_string();
                    self.pos += end + 1;
                    Ok(Arg { value, column })
                }
                None => Err(self.error_at(start, "unterminated string")),
            },
            Some('"') => {
                let mut value = String::new();
                loop {
                    match self.bump() {
                        None => return Err(self.error_at(start, "unterminated string")),
                        Some('"') => return Ok(Arg { value, column }),
                        Some('\\') => value.push(self.escape()?),
                        Some(c) => value.push(c),
                    }
                }
            }
            None => Err(self.error_at(start, "unexpected end of rule, expected a string")),
            Some(c) => Err(self.error_at(
                start,
                format!("expected a string in backticks or double quotes, found '{c}'"),
            )),
        }
    }

    /// Go's escapes inside an interpreted string literal (after the backslash).
    fn escape(&mut self) -> Result<char, ParseError> {
        let at = self.pos.saturating_sub(1);
        let c = self
            .bump()
            .ok_or_else(|| self.error_at(at, "unterminated escape"))?;
        let simple = match c {
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\u{b}'),
            '\\' => Some('\\'),
            '"' => Some('"'),
            '\'' => Some('\''),
            _ => None,
        };
        if let Some(s) = simple {
            return Ok(s);
        }
        let digits = match c {
            'x' => 2,
            'u' => 4,
            'U' => 8,
            _ => return Err(self.error_at(at, format!("unknown escape sequence '\\{c}'"))),
        };
        let hex = self.rest().get(..digits).unwrap_or("");
        let code = (hex.len() == digits && hex.chars().all(|h| h.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(hex, 16).ok())
            .flatten()
            .and_then(char::from_u32)
            .ok_or_else(|| self.error_at(at, format!("invalid escape '\\{c}{hex}'")))?;
        self.pos += digits;
        Ok(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &[&str]) -> Expr {
        Expr::Call {
            name: name.into(),
            column: 0,
            args: args
                .iter()
                .map(|a| Arg {
                    value: a.to_string(),
                    column: 0,
                })
                .collect(),
        }
    }

    /// Drops columns so trees can be compared structurally.
    fn strip(e: Expr) -> Expr {
        match e {
            Expr::And(items) => Expr::And(items.into_iter().map(strip).collect()),
            Expr::Or(items) => Expr::Or(items.into_iter().map(strip).collect()),
            Expr::Not(a) => Expr::Not(Box::new(strip(*a))),
            Expr::Call { name, args, .. } => Expr::Call {
                name,
                column: 0,
                args: args
                    .into_iter()
                    .map(|a| Arg {
                        value: a.value,
                        column: 0,
                    })
                    .collect(),
            },
        }
    }

    fn p(s: &str) -> Expr {
        strip(parse(s).unwrap())
    }

    #[test]
    fn single_call_and_args() {
        assert_eq!(p("Host(`a.com`)"), call("Host", &["a.com"]));
        assert_eq!(
            p("  Host( `a.com` , \"b.com\" )  "),
            call("Host", &["a.com", "b.com"])
        );
        assert_eq!(p("Foo()"), call("Foo", &[]));
    }

    #[test]
    fn precedence_and_binds_tighter_than_or() {
        let a = || call("A", &[]);
        let b = || call("B", &[]);
        let c = || call("C", &[]);
        let not = |e: Expr| Expr::Not(Box::new(e));
        assert_eq!(
            p("A() || B() && C()"),
            Expr::Or(vec![a(), Expr::And(vec![b(), c()])])
        );
        assert_eq!(
            p("A() && B() || C()"),
            Expr::Or(vec![Expr::And(vec![a(), b()]), c()])
        );
        assert_eq!(
            p("(A() || B()) && C()"),
            Expr::And(vec![Expr::Or(vec![a(), b()]), c()])
        );
        assert_eq!(p("!A() && B()"), Expr::And(vec![not(a()), b()]));
        assert_eq!(p("!(A() && B())"), not(Expr::And(vec![a(), b()])));
        assert_eq!(p("!!A()"), not(not(a())));
        // A chain is one flat list; parentheses keep their grouping.
        assert_eq!(p("A() || B() || C()"), Expr::Or(vec![a(), b(), c()]));
        assert_eq!(
            p("(A() || B()) || C()"),
            Expr::Or(vec![Expr::Or(vec![a(), b()]), c()])
        );
    }

    #[test]
    fn escapes_in_double_quotes_raw_in_backticks() {
        assert_eq!(
            p(r#"H("a\"b\\c\n\x41\u00e9")"#),
            call("H", &["a\"b\\c\nAé"])
        );
        assert_eq!(p(r"H(`a\nb`)"), call("H", &[r"a\nb"]));
        assert_eq!(p("H(`it's \"fine\"`)"), call("H", &["it's \"fine\""]));
    }

    #[test]
    fn errors_carry_columns() {
        let e = |s: &str| parse(s).unwrap_err();
        assert_eq!(
            e(""),
            ParseError {
                column: 1,
                message: "empty rule".into()
            }
        );
        assert_eq!(
            e("Host(`a`"),
            ParseError {
                column: 9,
                message: "unexpected end of rule, expected ',' or ')'".into()
            }
        );
        assert_eq!(e("Host(`a` `b`)").column, 10);
        assert_eq!(e("Host(`a` `b`)").message, "expected ',' or ')'");
        assert_eq!(
            e("Host(`a`) &&").message,
            "unexpected end of rule, expected a matcher"
        );
        assert_eq!(e("Host(`a`) &&").column, 13);
        assert_eq!(e("Host(`a`) & Path(`/`)").column, 11);
        assert_eq!(
            e("Host(a)").message,
            "expected a string in backticks or double quotes, found 'a'"
        );
        assert_eq!(e("Host(a)").column, 6);
        assert_eq!(e("Host(`abc").message, "unterminated string");
        assert_eq!(e("Host(`abc").column, 6);
        assert_eq!(e("Host").message, "expected '(' after Host");
        assert_eq!(
            e("(Host(`a`)").message,
            "unexpected end of rule, expected ')'"
        );
        assert_eq!(e("H(\"\\q\")").message, "unknown escape sequence '\\q'");
        assert_eq!(e("H(\"\\x4\")").message, "invalid escape '\\x4\"'");
        assert_eq!(e("= H()").column, 1);
        // Columns count characters, not bytes.
        assert_eq!(e("H(`é`) x").column, 8);
    }
}
