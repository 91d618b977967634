//! Registration of the `env.proxy_*` host functions (bodies in [`super::imports`]) under the
//! names and signatures the ABI gives them.

use wasmtime::{Caller, Linker};

use super::imports::*;
use super::vm::VmState;
use super::{grpc_stream, props};
use super::{maps, Status};

type C<'a> = Caller<'a, VmState>;
type Ret = wasmtime::Result<i32>;

/// Adds every `env.proxy_*` function to `linker`.
pub(crate) fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_log",
        |mut c: C, lv: i32, p: i32, n: i32| -> Ret { finish(log(&mut c, lv, p, n)) },
    )?;
    l.func_wrap("env", "proxy_get_log_level", |mut c: C, r: i32| -> Ret {
        let level = c.data().plugin.config.log_level as u32;
        finish(write_u32(&mut c, r, level))
    })?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C, r: i32| -> Ret {
            let now = c.data().process.realtime_ns();
            finish(write_u64(&mut c, r, now))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C, ms: i32| -> Ret {
            let st = c.data_mut();
            let ms = ms as u32;
            st.tick_period_ms = ms;
            let now = st.elapsed_ns();
            st.next_tick_ns = (ms > 0).then(|| now + u64::from(ms) * 1_000_000);
            finish(Ok(()))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C, t: i32, s: i32, m: i32, pp: i32, sp: i32| -> Ret {
            finish(get_buffer_bytes(&mut c, t, s, m, pp, sp))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C, t: i32, lp: i32, fp: i32| -> Ret {
            let len = match buffer_of(c.data_mut(), t) {
                Ok(b) => b.bytes().len() as u32,
                Err(s) => return finish(Err(s.into())),
            };
            finish(write_u32(&mut c, lp, len).and_then(|()| write_u32(&mut c, fp, 0)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C, t: i32, s: i32, n: i32, p: i32, l: i32| -> Ret {
            finish(set_buffer_bytes(&mut c, t, s, n, p, l))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C, t: i32, pp: i32, sp: i32| -> Ret { finish(get_map_pairs(&mut c, t, pp, sp)) },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C, t: i32, p: i32, n: i32| -> Ret { finish(set_map_pairs(&mut c, t, p, n)) },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C, t: i32, r: i32| -> Ret {
            let size = match map_of(c.data_mut(), t, false) {
                Ok(m) => m.byte_size() as u32,
                Err(s) => return finish(Err(s.into())),
            };
            finish(write_u32(&mut c, r, size))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C, t: i32, kp: i32, kl: i32, pp: i32, sp: i32| -> Ret {
            finish(get_map_value(&mut c, t, kp, kl, pp, sp))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> Ret {
            finish(edit_map_value(&mut c, t, kp, kl, Some((vp, vl, false))))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> Ret {
            finish(edit_map_value(&mut c, t, kp, kl, Some((vp, vl, true))))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C, t: i32, kp: i32, kl: i32| -> Ret {
            finish(edit_map_value(&mut c, t, kp, kl, None))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C, pp: i32, pl: i32, rp: i32, rs: i32| -> Ret {
            let r = (|| {
                let path = read(&mut c, pp, pl)?;
                let value = props::get(c.data_mut(), &maps::property_path(&path))?;
                copy_out(&mut c, &value, rp, rs)
            })();
            finish(r)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C, pp: i32, pl: i32, vp: i32, vl: i32| -> Ret {
            let r = (|| {
                let path = read(&mut c, pp, pl)?;
                let value = read(&mut c, vp, vl)?;
                props::set(c.data_mut(), path, value);
                Ok(())
            })();
            finish(r)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C, kp: i32, kl: i32, pp: i32, sp: i32, cp: i32| -> Ret {
            finish(get_shared_data(&mut c, kp, kl, pp, sp, cp))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> Ret {
            finish(set_shared_data(&mut c, kp, kl, vp, vl, cas))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C, np: i32, nl: i32, r: i32| -> Ret { finish(register_queue(&mut c, np, nl, r)) },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C, vp: i32, vl: i32, np: i32, nl: i32, r: i32| -> Ret {
            finish(resolve_queue(&mut c, vp, vl, np, nl, r))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C, id: i32, pp: i32, sp: i32| -> Ret { finish(dequeue(&mut c, id, pp, sp)) },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C, id: i32, vp: i32, vl: i32| -> Ret { finish(enqueue(&mut c, id, vp, vl)) },
    )?;
    l.func_wrap("env", "proxy_continue_stream", |mut c: C, t: i32| -> Ret {
        finish(continue_stream(&mut c, t))
    })?;
    l.func_wrap("env", "proxy_close_stream", |mut c: C, t: i32| -> Ret {
        finish(close_stream(&mut c, t))
    })?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C, st: i32, dp: i32, dl: i32, bp: i32, bl: i32, hp: i32, hl: i32, g: i32| -> Ret {
            finish(send_local_response(&mut c, st, dp, dl, bp, bl, hp, hl, g))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         to: i32,
         r: i32|
         -> Ret { finish(http_call(&mut c, up, ul, hp, hl, bp, bl, tp, tl, to, r)) },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: C,
         cp: i32,
         cl: i32,
         sp: i32,
         sl: i32,
         mp: i32,
         ml: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         to: i32,
         r: i32|
         -> Ret {
            finish(grpc_call(
                &mut c,
                (cp, cl),
                (sp, sl),
                (mp, ml),
                (hp, hl),
                (bp, bl),
                to,
                r,
            ))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: C,
         cp: i32,
         cl: i32,
         sp: i32,
         sl: i32,
         mp: i32,
         ml: i32,
         hp: i32,
         hl: i32,
         r: i32|
         -> Ret {
            finish(grpc_stream::grpc_stream(
                &mut c,
                (cp, cl),
                (sp, sl),
                (mp, ml),
                (hp, hl),
                r,
            ))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut c: C, t: i32, mp: i32, ml: i32, eos: i32| -> Ret {
            finish(grpc_stream::grpc_send(&mut c, t as u32, (mp, ml), eos != 0))
        },
    )?;
    // On a call token Envoy cancels the call either way: no answer is delivered.
    l.func_wrap("env", "proxy_grpc_cancel", |mut c: C, t: i32| -> Ret {
        Ok(grpc_stream::grpc_cancel(c.data_mut(), t as u32) as i32)
    })?;
    l.func_wrap("env", "proxy_grpc_close", |mut c: C, t: i32| -> Ret {
        Ok(grpc_stream::grpc_close(c.data_mut(), t as u32) as i32)
    })?;
    l.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C, cp: i32, pp: i32, sp: i32| -> Ret { finish(get_status(&mut c, cp, pp, sp)) },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C, id: i32| -> Ret {
            let st = c.data_mut();
            if st.has_context(id as u32) {
                st.effective = Some(id as u32);
                Ok(Status::Ok as i32)
            } else {
                Ok(Status::BadArgument as i32)
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C, np: i32, nl: i32, ap: i32, al: i32, pp: i32, sp: i32| -> Ret {
            finish(call_foreign(&mut c, np, nl, ap, al, pp, sp))
        },
    )?;
    l.func_wrap("env", "proxy_done", |_: C| -> Ret { Ok(Status::Ok as i32) })?;
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C, t: i32, np: i32, nl: i32, r: i32| -> Ret {
            finish(define_metric(&mut c, t, np, nl, r))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: C, id: i32, off: i64| -> Ret { finish(increment_metric(&mut c, id, off)) },
    )?;
    l.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: C, id: i32, v: i64| -> Ret { finish(record_metric(&mut c, id, v)) },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C, id: i32, r: i32| -> Ret { finish(get_metric(&mut c, id, r)) },
    )?;
    Ok(())
}
