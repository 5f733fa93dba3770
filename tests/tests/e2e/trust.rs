//! Trust that holds offline (docs/SITE.md, "Trust updates" and "Time and
//! expiry"): release keys rotated by signed trust updates, a clock that
//! only moves forward, and a bundle's signatures checked by minisign itself.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::demo::Demo;
use crate::harness::{airlock_apply, airlock_build, bin, trust_update, Keys, Run};

fn trust_show(demo: &Demo) -> serde_json::Value {
    let run = airlock_apply(&["--json", "trust", "show", "--site", &demo.site()]).ok();
    serde_json::from_str(run.stdout.trim()).unwrap()
}

fn installed_release(demo: &Demo) -> String {
    fs::read_to_string(demo.site_dir().join("node/RELEASE")).unwrap()
}

fn sign(update: &str, key: &str) {
    airlock_build(&["trust", "sign", update, "--key", key]).ok();
}

#[track_caller]
fn refused(run: &Run, want: &str) {
    eprintln!("{}", run.stderr);
    assert_eq!(run.code, 3, "expected exit 3:\n{}", run.stderr);
    assert!(
        run.stderr.contains(want),
        "expected `{want}` in:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("help:"),
        "no help line:\n{}",
        run.stderr
    );
}

#[test]
fn a_rotation_needs_both_thresholds_and_a_higher_version_and_retires_the_old_key() {
    let demo = Demo::start();
    let keys = Keys::new(&["next"]);
    let next_pub = keys.public("next").display().to_string();
    let next_id = fs::read_to_string(&next_pub).unwrap();
    let next_id = next_id.split_whitespace().nth(5).unwrap().to_owned();
    let update = trust_update(
        &demo.root.join("trust-2.json"),
        &keys.public("next"),
        2,
        &[],
    );
    let install = || airlock_apply(&["trust", "install", &update, "--site", &demo.site()]);

    // Unsigned, then signed by the old key alone: refused, nothing kept.
    refused(
        &install(),
        "signed by 0 of the current keys, and 1 must sign",
    );
    sign(&update, &demo.keys.secret("release"));
    refused(&install(), "signed by 0 of the new keys, and 1 must sign");
    assert_eq!(trust_show(&demo)["version"], 1);

    // Signed by the old key and the new one: version 2 is in force.
    sign(&update, &keys.secret("next"));
    let run = install().ok();
    assert!(
        run.stderr.contains("trust version 2 installed (was 1)"),
        "{}",
        run.stderr
    );
    let shown = trust_show(&demo);
    assert_eq!(shown["version"], 2);
    assert_eq!(shown["source"], "trust update");
    assert_eq!(shown["keys"], serde_json::json!([next_id]));

    // The same version again, and an update that does not raise it.
    refused(
        &install(),
        "it is trust version 2, and version 2 is in force here",
    );
    let again = trust_update(
        &demo.root.join("trust-2b.json"),
        &keys.public("next"),
        2,
        &[&keys.secret("next")],
    );
    refused(
        &airlock_apply(&["trust", "install", &again, "--site", &demo.site()]),
        "must raise the version",
    );

    // The rotated-out key no longer signs anything this site applies.
    let old = demo.bundle();
    refused(
        &airlock_apply(&["apply", &old, "--site", &demo.site()]),
        "is not trusted by this site",
    );
    assert_eq!(installed_release(&demo), "1.0.0\n");
    // The new key does.
    let new = demo.release_as("1.1.0", &keys.secret("next"), None, |_| {});
    airlock_apply(&["apply", &new, "--site", &demo.site()]).ok();
    assert_eq!(installed_release(&demo), "1.1.0\n");

    // Every attempt is in the audit trail, whose chain is intact.
    let history = airlock_apply(&["history", "--site", &demo.site()])
        .ok()
        .stdout;
    assert_eq!(history.matches("trust-install").count(), 5, "{history}");
    assert!(history.contains("trust 2"), "{history}");
    airlock_apply(&["history", "--check", "--site", &demo.site()]).ok();
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `airlock-apply ARGS` with the clock `offset` ahead (libfaketime's
/// `faketime`, Debian package `faketime`).
fn airlock_apply_at(offset: &str, args: &[&str]) -> Run {
    let out = Command::new("faketime")
        .args(["-f", offset])
        .arg(bin("airlock-apply"))
        .args(args)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .expect("run faketime (Debian package `faketime`)");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn expiring_in(days: u64) -> impl FnOnce(&Path) {
    move |release: &Path| {
        let spec = release.join("bundle.toml");
        let text = fs::read_to_string(&spec).unwrap();
        assert!(text.contains("expires_after_days = 365"));
        fs::write(
            &spec,
            text.replace(
                "expires_after_days = 365",
                &format!("expires_after_days = {days}"),
            ),
        )
        .unwrap();
    }
}

#[test]
fn time_never_goes_back_for_expiry_and_a_bundle_from_the_future_is_refused() {
    let demo = Demo::start();
    let key = demo.keys.secret("release");
    let now = unix_now();
    let day = 86_400;

    // Made ten days ahead of this clock: refused, unless its time is trusted.
    let future = demo.release_as("1.2.0", &key, Some(now + 10 * day), expiring_in(400));
    refused(
        &airlock_apply(&["apply", &future, "--site", &demo.site()]),
        "s ahead: the clock here says",
    );
    assert_eq!(installed_release(&demo), "1.0.0\n");
    airlock_apply(&[
        "apply",
        &future,
        "--site",
        &demo.site(),
        "--trust-bundle-time",
    ])
    .ok();
    assert_eq!(installed_release(&demo), "1.2.0\n");

    // That moved this node's time ten days on: a bundle valid for five
    // days by the clock has expired here.
    let five = demo.release_as("1.3.0", &key, Some(now), expiring_in(5));
    refused(
        &airlock_apply(&["verify", &five, "--site", &demo.site()]),
        "recorded from the created_at of bundle demo 1.2.0",
    );

    // A bundle valid for 30 days, seen expired by a clock 60 days ahead,
    // stays expired when the clock is set back.
    let thirty = demo.release_as("1.4.0", &key, Some(now), expiring_in(30));
    refused(
        &airlock_apply_at("+60d", &["verify", &thirty, "--site", &demo.site()]),
        "expired at",
    );
    let run = airlock_apply(&["verify", &thirty, "--site", &demo.site()]);
    refused(&run, "recorded from the clock");
    assert!(
        run.stderr.contains("airlock never lets time go back"),
        "{}",
        run.stderr
    );
    assert_eq!(installed_release(&demo), "1.2.0\n");

    // --allow-expired applies it, and says so in the audit trail.
    airlock_apply(&["apply", &thirty, "--site", &demo.site(), "--allow-expired"]).ok();
    assert_eq!(installed_release(&demo), "1.4.0\n");
    let history = airlock_apply(&["history", "--site", &demo.site()])
        .ok()
        .stdout;
    assert!(
        history.contains("--trust-bundle-time: accepted its created_at"),
        "{history}"
    );
    assert!(
        history.contains("--allow-expired: accepted although it expired at"),
        "{history}"
    );
    airlock_apply(&["history", "--check", "--site", &demo.site()]).ok();
}

#[test]
fn an_exported_manifest_and_its_signatures_verify_with_minisign_itself() {
    let demo = Demo::start();
    let dir = demo.root.join("export");
    airlock_build(&[
        "inspect",
        &demo.bundle(),
        "--export",
        &dir.display().to_string(),
    ])
    .ok();
    let sigs: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "minisig"))
        .collect();
    assert_eq!(sigs.len(), 1);
    let minisign = |manifest: &Path| {
        Command::new("minisign")
            .arg("-Vm")
            .arg(manifest)
            .arg("-x")
            .arg(&sigs[0])
            .arg("-p")
            .arg(demo.keys.public("release"))
            .output()
            .expect("run minisign (Debian package `minisign`)")
    };
    let manifest = dir.join("manifest.json");
    let out = minisign(&manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Signature and comment signature verified")
    );
    // One byte changed and minisign refuses it.
    let altered = dir.join("altered.json");
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(&altered, text.replacen("1.1.0", "1.1.1", 1)).unwrap();
    assert!(!minisign(&altered).status.success());
}

/// An edit of a demo release that makes its bundle carry the trust update `update`.
fn carrying(update: &Path) -> impl FnOnce(&Path) + '_ {
    move |release: &Path| {
        fs::copy(update, release.join("trust-update.json")).unwrap();
        let spec = release.join("bundle.toml");
        let text = fs::read_to_string(&spec).unwrap();
        fs::write(
            &spec,
            format!("trust_update = \"trust-update.json\"\n{text}"),
        )
        .unwrap();
    }
}

#[test]
fn a_bundle_carries_its_rotation_and_is_signed_by_the_new_key_alone() {
    let demo = Demo::start();
    let keys = Keys::new(&["next"]);
    // Signed by the new key only: the site's key never vouched for it, so
    // the bundle carrying it is refused and nothing changes.
    let update = demo.root.join("trust-2.json");
    let update_text = trust_update(&update, &keys.public("next"), 2, &[&keys.secret("next")]);
    let half = demo.release_as("1.1.0", &keys.secret("next"), None, carrying(&update));
    refused(
        &airlock_apply(&["apply", &half, "--site", &demo.site()]),
        "it carries a trust update that this site does not accept: it is signed by 0 of the current keys",
    );
    assert_eq!(installed_release(&demo), "1.0.0\n");
    assert_eq!(trust_show(&demo)["version"], 1);

    // Signed by both: the bundle, signed by the new key alone, is applied,
    // and the update is in force.
    sign(&update_text, &demo.keys.secret("release"));
    let run = airlock_build(&["inspect", &half]).ok();
    assert!(
        run.stdout
            .contains("trust update  version 2: 1 of 1 key(s) must sign"),
        "{}",
        run.stdout
    );
    let whole = demo.release_as("1.2.0", &keys.secret("next"), None, carrying(&update));
    let run = airlock_apply(&["apply", &whole, "--site", &demo.site()]).ok();
    assert!(
        run.stderr
            .contains("trust version 2 carried by the bundle installed"),
        "{}",
        run.stderr
    );
    assert_eq!(installed_release(&demo), "1.2.0\n");
    assert_eq!(trust_show(&demo)["version"], 2);
    let history = airlock_apply(&["history", "--site", &demo.site()])
        .ok()
        .stdout;
    assert!(history.contains("trust-install"), "{history}");

    // The old key is out.
    let old = demo.release_as("1.3.0", &demo.keys.secret("release"), None, |_| {});
    refused(
        &airlock_apply(&["apply", &old, "--site", &demo.site()]),
        "is not trusted by this site",
    );
    assert_eq!(installed_release(&demo), "1.2.0\n");
}

#[test]
fn a_key_made_by_minisign_w_signs_a_bundle_the_site_applies() {
    let demo = Demo::start();
    let dir = demo.root.join("minisign");
    fs::create_dir(&dir).unwrap();
    let (public, secret) = (dir.join("m.pub"), dir.join("m.key"));
    let out = Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .output()
        .expect("run minisign (Debian package `minisign`)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The site trusts the minisign key instead of its own.
    fs::copy(&public, demo.site_dir().join("keys/release.pub")).unwrap();
    let bundle = demo.release_as("1.1.0", &secret.display().to_string(), None, |_| {});
    airlock_build(&["verify", &bundle, "--trust", &public.display().to_string()]).ok();
    airlock_apply(&["apply", &bundle, "--site", &demo.site()]).ok();
    assert_eq!(installed_release(&demo), "1.1.0\n");
}
