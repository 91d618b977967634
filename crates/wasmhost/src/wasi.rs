//! The WASI preview-1 calls proxy-wasm modules built for `wasm32-wasip1` import, with
//! cpp-host's behaviour: stdout/stderr go to the log (Info / Error), clocks read the virtual
//! clock, there are no files, and `proc_exit` ends the VM. Registered under both
//! `wasi_snapshot_preview1` and `wasi_unstable`, as cpp-host does.

use wasmtime::{Caller, Linker};

use super::imports::{read, write, write_u32, write_u64};
use super::shared::lock;
use super::vm::VmState;
use super::LogLevel;

const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOSYS: i32 = 52;
const ENOTSUP: i32 = 58;

type C<'a> = Caller<'a, VmState>;
type Ret = wasmtime::Result<i32>;

/// Any memory error becomes EFAULT; a trap (cannot happen here) passes through.
fn errno(r: super::imports::R<()>) -> Ret {
    match r {
        Ok(()) => Ok(SUCCESS),
        Err(super::imports::Fail::Status(_)) => Ok(EFAULT),
        Err(super::imports::Fail::Trap(e)) => Err(e),
    }
}

fn fd_write(c: &mut C<'_>, fd: i32, iovs: i32, n: i32, written_ptr: i32) -> Ret {
    if fd != 1 && fd != 2 {
        return Ok(EBADF);
    }
    let r = (|| {
        let mut text = Vec::new();
        for i in 0..n.max(0) {
            let iov = read(c, iovs.wrapping_add(i * 8), 8)?;
            let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
            let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
            text.extend(read(c, ptr, len)?);
        }
        write_u32(c, written_ptr, text.len() as u32)?;
        let mut message = String::from_utf8_lossy(&text).into_owned();
        if message.ends_with('\n') {
            message.pop();
        }
        let st = c.data_mut();
        if fd == 2 {
            // A Rust panic on wasip1 prints its message to stderr before trapping.
            st.panic_text.push(message.clone());
            st.log(LogLevel::Error, message);
        } else {
            st.log(LogLevel::Info, message);
        }
        Ok(())
    })();
    errno(r)
}

/// `environ` as `KEY=VALUE\0` strings: the plugin's `vm_config.environment_variables`.
fn environ(c: &C<'_>) -> Vec<Vec<u8>> {
    c.data()
        .plugin
        .config
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}\0").into_bytes())
        .collect()
}

fn environ_get(c: &mut C<'_>, ptrs: i32, buf: i32) -> Ret {
    let vars = environ(c);
    let r = (|| {
        let mut at = buf;
        for (i, var) in vars.iter().enumerate() {
            write_u32(c, ptrs.wrapping_add(i as i32 * 4), at as u32)?;
            write(c, at, var)?;
            at = at.wrapping_add(var.len() as i32);
        }
        Ok(())
    })();
    errno(r)
}

fn environ_sizes_get(c: &mut C<'_>, count_ptr: i32, size_ptr: i32) -> Ret {
    let vars = environ(c);
    let size: usize = vars.iter().map(Vec::len).sum();
    errno(
        write_u32(c, count_ptr, vars.len() as u32)
            .and_then(|()| write_u32(c, size_ptr, size as u32)),
    )
}

fn clock_time_get(c: &mut C<'_>, id: i32, out: i32) -> Ret {
    let now = {
        let clock = lock(&c.data().process.clock);
        match id {
            0 => clock.realtime_ns(),
            1 => clock.monotonic_ns(),
            _ => return Ok(ENOTSUP),
        }
    };
    errno(write_u64(c, out, now))
}

fn random_get(c: &mut C<'_>, buf: i32, len: i32) -> Ret {
    let len = len as u32 as usize;
    if len > 64 * 1024 {
        return Ok(EINVAL);
    }
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        let r = c.data_mut().next_random();
        bytes.extend_from_slice(&r.to_le_bytes());
    }
    bytes.truncate(len);
    errno(write(c, buf, &bytes))
}

/// Adds the WASI functions under `module`.
fn add_module(l: &mut Linker<VmState>, m: &str) -> wasmtime::Result<()> {
    l.func_wrap(
        m,
        "fd_write",
        |mut c: C, fd: i32, iovs: i32, n: i32, w: i32| -> Ret { fd_write(&mut c, fd, iovs, n, w) },
    )?;
    l.func_wrap(
        m,
        "fd_read",
        |_: C, _: i32, _: i32, _: i32, _: i32| -> Ret { Ok(EBADF) },
    )?;
    l.func_wrap(m, "fd_close", |_: C, _: i32| -> Ret { Ok(EBADF) })?;
    l.func_wrap(
        m,
        "fd_seek",
        |_: C, _: i32, _: i64, _: i32, _: i32| -> Ret { Ok(EBADF) },
    )?;
    l.func_wrap(m, "fd_fdstat_get", |mut c: C, fd: i32, out: i32| -> Ret {
        if !(0..=2).contains(&fd) {
            return Ok(EBADF);
        }
        // A character device (filetype 2) with no flags and no rights.
        let mut stat = [0u8; 24];
        stat[0] = 2;
        errno(write(&mut c, out, &stat))
    })?;
    l.func_wrap(m, "fd_fdstat_set_flags", |_: C, _: i32, _: i32| -> Ret {
        Ok(ENOSYS)
    })?;
    // EBADF for fd 3 tells libstd there are no preopened directories.
    l.func_wrap(m, "fd_prestat_get", |_: C, _: i32, _: i32| -> Ret {
        Ok(EBADF)
    })?;
    l.func_wrap(
        m,
        "fd_prestat_dir_name",
        |_: C, _: i32, _: i32, _: i32| -> Ret { Ok(EBADF) },
    )?;
    l.func_wrap(m, "fd_filestat_get", |_: C, _: i32, _: i32| -> Ret {
        Ok(EBADF)
    })?;
    l.func_wrap(
        m,
        "path_open",
        |_: C, _: i32, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32, _: i32| -> Ret {
            Ok(ENOSYS)
        },
    )?;
    l.func_wrap(m, "environ_get", |mut c: C, p: i32, b: i32| -> Ret {
        environ_get(&mut c, p, b)
    })?;
    l.func_wrap(m, "environ_sizes_get", |mut c: C, n: i32, s: i32| -> Ret {
        environ_sizes_get(&mut c, n, s)
    })?;
    l.func_wrap(m, "args_get", |_: C, _: i32, _: i32| -> Ret { Ok(SUCCESS) })?;
    l.func_wrap(m, "args_sizes_get", |mut c: C, n: i32, s: i32| -> Ret {
        errno(write_u32(&mut c, n, 0).and_then(|()| write_u32(&mut c, s, 0)))
    })?;
    l.func_wrap(
        m,
        "clock_time_get",
        |mut c: C, id: i32, _precision: i64, out: i32| -> Ret { clock_time_get(&mut c, id, out) },
    )?;
    l.func_wrap(m, "clock_res_get", |mut c: C, id: i32, out: i32| -> Ret {
        if !(0..=1).contains(&id) {
            return Ok(ENOTSUP);
        }
        errno(write_u64(&mut c, out, 1))
    })?;
    l.func_wrap(m, "random_get", |mut c: C, b: i32, n: i32| -> Ret {
        random_get(&mut c, b, n)
    })?;
    l.func_wrap(m, "sched_yield", |_: C| -> Ret { Ok(SUCCESS) })?;
    l.func_wrap(
        m,
        "poll_oneoff",
        |mut c: C, _in: i32, _out: i32, _n: i32, events: i32| -> Ret {
            // cpp-host reports success with no events.
            errno(write_u32(&mut c, events, 0))
        },
    )?;
    l.func_wrap(
        m,
        "proc_exit",
        |mut c: C, code: i32| -> wasmtime::Result<()> {
            let message = format!("proc_exit({code})");
            c.data_mut().log(LogLevel::Critical, message.clone());
            // The module cannot continue past proc_exit: end the call as a trap.
            Err(wasmtime::Error::msg(message))
        },
    )?;
    Ok(())
}

/// Adds WASI preview 1 under both names cpp-host registers.
pub(crate) fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    add_module(l, "wasi_snapshot_preview1")?;
    add_module(l, "wasi_unstable")
}
