//! Child processes that cannot outlive the test process.
//!
//! The program runs under a small `sh` guard whose stdin is a pipe from the test process:
//! `prog ARGS >>OUT 2>>ERR </dev/null & p=$!; echo $p; read _; kill $p; wait $p`.
//! When the test process exits for any reason (normal exit, panic, SIGKILL) the kernel closes
//! the pipe, `read` returns, and the guard kills the program (SIGTERM, then SIGKILL after
//! 5 s) and then removes the given cleanup directories (temp dirs of fixtures kept in statics,
//! whose `Drop` never runs). An explicit [`GuardedChild::stop`] writes a line first, so the
//! guard then stops the program but leaves the directories alone. Rust opens every pipe
//! close-on-exec, so no other child holds the pipe open.
//! (`PR_SET_PDEATHSIG` is not used: it fires when the spawning *thread* exits, which the test
//! harness does all the time.)

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const GUARD: &str = r#"prog=$1; out=$2; err=$3; cleanup=$4; shift 4
"$prog" "$@" >>"$out" 2>>"$err" </dev/null &
p=$!
echo "$p"
if read _cmd; then stopped=1; else stopped=0; fi
kill -TERM "$p" 2>/dev/null
( sleep 5; kill -KILL "$p" 2>/dev/null ) &
k=$!
wait "$p"
kill "$k" 2>/dev/null
if [ "$stopped" = 0 ] && [ -n "$cleanup" ]; then
  printf '%s\n' "$cleanup" | while IFS= read -r d; do
    case "$d" in */airlock-*) rm -rf -- "$d" 2>/dev/null ;; esac
  done
fi
exit 0
"#;

/// A running program guarded so that it dies with the test process. Dropping it stops it.
pub struct GuardedChild {
    guard: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

impl GuardedChild {
    /// Start `program args...` with stdout appended to `stdout_path`, stderr appended to
    /// `stderr_path` and stdin from /dev/null. If the test process exits without stopping it,
    /// the guard also deletes each `cleanup` directory whose path contains "/airlock-".
    /// `env` is added to the program's environment (the test process's own is never changed).
    pub fn spawn<S: AsRef<OsStr>>(
        program: &str,
        args: &[S],
        stdout_path: &Path,
        stderr_path: &Path,
        cleanup: &[&Path],
        env: &[(&str, &str)],
    ) -> std::io::Result<GuardedChild> {
        let cleanup: Vec<String> = cleanup.iter().map(|p| p.display().to_string()).collect();
        let mut guard = Command::new(super::tools::SH.path())
            .arg("-c")
            .arg(GUARD)
            .arg("airlock-fixture-guard")
            .arg(program)
            .arg(stdout_path)
            .arg(stderr_path)
            .arg(cleanup.join("\n"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = guard.stdin.take();
        let stdout = guard.stdout.take().expect("guard stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let pid = line.trim().parse::<u32>().map_err(|_| {
            std::io::Error::other(format!("guard shell did not print a pid (got {line:?})"))
        })?;
        Ok(GuardedChild { guard, stdin, pid })
    }

    /// Process id of the program itself (not of the guard shell).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True while the program runs (exists and is not a zombie).
    pub fn is_running(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        // "pid (comm) S ...": the state follows the last ')'.
        match stat.rfind(')') {
            Some(i) => !matches!(
                stat[i + 1..].trim_start().chars().next(),
                Some('Z' | 'X') | None
            ),
            None => false,
        }
    }

    /// Stop the program and wait until it and its guard are gone (bounded: after ~10 s
    /// both get SIGKILL). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            // "stop" then EOF: the guard kills the program, waits for it, and keeps the dirs.
            let _ = stdin.write_all(b"stop\n");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.guard.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = Command::new(super::tools::KILL.path())
                        .arg("-KILL")
                        .arg(self.pid.to_string())
                        .status();
                    let _ = self.guard.kill();
                    let _ = self.guard.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for GuardedChild {
    fn drop(&mut self) {
        self.stop();
    }
}
