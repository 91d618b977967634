//! `rollgate serve --dir` against hostile directory content: links, secrets in files,
//! huge or deeply nested YAML, files that vanish for a moment. Issue 11.

mod rollout_support;

use std::time::Duration;

use rollout_support::{wait_until, Sidecar, TempDir, SEED};

const WAIT: Duration = Duration::from_secs(10);

/// Every regular file in `dir`, concatenated (status files, temp files; not links).
fn dir_text(dir: &TempDir) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(&dir.0).unwrap() {
        let e = e.unwrap();
        if !e.file_type().unwrap().is_file() {
            continue;
        }
        if let Ok(t) = std::fs::read_to_string(e.path()) {
            out.push_str(&t);
        }
    }
    out
}

/// `ln -s /etc/passwd DIR/passwd.yaml` put the linked file's whole content into the log, the
/// status file and the unauthenticated `GET /v1/rollouts`, as the YAML error. Now the link is
/// refused by name and never read; status files are never written through a link either.
#[test]
fn symlinks_are_not_followed() {
    let dir = TempDir::new("links");
    let outside = TempDir::new("links-outside");
    let marker = "s3cr3t-7d1e0b9c4a";
    let secret: String = (0..25)
        .map(|i| format!("user{i}:x:{i}:{i}:{marker}:/home/user{i}:/bin/sh\n"))
        .collect();
    outside.write("passwd", &secret);
    std::os::unix::fs::symlink(outside.path("passwd"), dir.path("passwd.yaml")).unwrap();
    // A link where the status file goes and one at its temp name: neither is written through.
    outside.write("victim", "untouched");
    std::os::unix::fs::symlink(outside.path("victim"), dir.path("flask.status.json")).unwrap();
    std::os::unix::fs::symlink(outside.path("victim"), dir.path(".flask.status.json.tmp")).unwrap();
    dir.write("flask.yaml", SEED);

    let s = Sidecar::start(&dir.0, &[]);
    let refused = "a symbolic link: links are not followed, the file is not read";
    assert_eq!(s.rollout("passwd")["error"], refused);
    assert_eq!(s.rollout("passwd")["serving"], false);
    assert!(
        s.logged(&format!(
            "passwd.yaml: invalid, nothing is served for it: {refused}"
        )),
        "{}",
        s.log_text()
    );
    assert_eq!(s.rollout("flask")["status"]["policyVersion"], 1);

    let api = s.get("/v1/rollouts").text();
    assert!(!api.contains(marker), "{api}");
    assert!(!s.log_text().contains(marker), "{}", s.log_text());
    assert!(!dir_text(&dir).contains(marker));
    assert_eq!(outside.read("victim"), "untouched");
    let status = std::fs::symlink_metadata(dir.path("flask.status.json")).unwrap();
    assert!(status.file_type().is_file(), "the link was replaced");
    assert!(dir
        .read("flask.status.json")
        .contains("\"rollout\": \"flask\""));

    // Reported once, not at every scan.
    std::thread::sleep(Duration::from_millis(500));
    let times = s
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("passwd.yaml"))
        .count();
    assert_eq!(times, 1, "{}", s.log_text());

    // A regular file under the same name is read as usual.
    std::fs::remove_file(dir.path("passwd.yaml")).unwrap();
    dir.write("passwd.yaml", &SEED.replace("name: flask", "name: passwd"));
    wait_until("the regular file to load", WAIT, || {
        s.rollout("passwd")["serving"] == true
    });
}
