//! The client commands against a real `qm dev`, as a newcomer types them: addresses, exit
//! codes, JSON, priority classes, files, kinds, and failover.

mod common;

use common::{qm, qm_env, text, Dev};
use serde_json::Value;
use std::process::Output;

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)))
}

/// `qm dev`, then the commands of the README's quick start, as a newcomer would type them.
#[test]
fn dev_serves_the_client_commands() {
    let dev = Dev::start();
    let server = dev.flag();
    let export = format!("export QM_SERVER=https://{} QM_TLS_CA={} QM_TEAM=dev", dev.addr, dev.ca.display());
    assert!(dev.banner.contains(&export), "{}", dev.banner);
    let quota =
        ["quota", "set", &server, "--team", "research", "--flavor", "gpu/nvidia-h100-80gb-hbm3", "--nominal", "8"];
    let set = qm(&quota);
    assert!(set.status.success(), "{}", text(&set.stderr));
    let zero = qm(&[&quota[..], &["--weight", "0"]].concat());
    assert_eq!(zero.status.code(), Some(2), "a weight of 0 is refused, not read as absent");
    assert!(text(&zero.stderr).contains("--weight: must be in (0, 1000], got 0"), "{}", text(&zero.stderr));
    let warning = "gpu/nvidia-h100-80gb-hbm3: the teams' nominal quotas add up to 8 device(s), more than the 0";
    assert!(text(&set.stderr).contains(warning), "no node yet: {}", text(&set.stderr));
    let submitted =
        qm(&["submit", &server, "--team", "research", "--gpus", "2", "--name", "hello", "--", "python", "t.py"]);
    assert_eq!(text(&submitted.stdout).trim(), "submitted job 1", "{}", text(&submitted.stderr));
    let bad = qm(&["submit", &server, "--team", "research", "--gpus", "0", "--", "true"]);
    let said = text(&bad.stderr);
    assert!(said.contains("qm: --gpus: must be 1..=64 devices per replica, got 0"), "the flag, not the field: {said}");
    assert_eq!(bad.status.code(), Some(2), "an invalid request is a usage error");
    let models = ["--model", "nvidia-h100-80gb-hbm3", "--model", "nvidia-h1OO"];
    let typo = qm(&[&["submit", &server, "--team", "research"][..], &models, &["--", "true"]].concat());
    assert_eq!(typo.status.code(), Some(2));
    let expected = "--model[1]: no flavor gpu/nvidia-h1OO in team \"research\"'s quota or in the cluster";
    assert!(text(&typo.stderr).contains(expected), "{}", text(&typo.stderr));
    let listed = json(&qm(&["jobs", &server, "--json"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!((listed[0]["devices"].as_u64(), listed[0]["state"].as_str()), (Some(2), Some("pending")));
    assert_eq!(listed[0]["flavor"], "gpu/*");
    let table = text(&qm(&["jobs", &server]).stdout);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["ID", "NAME", "TEAM", "STATE", "PRIORITY", "FLAVOR", "DEVICES", "NODE", "AGE"]);
    let why = text(&qm(&["why", &server, "1"]).stdout);
    assert!(why.starts_with("job 1 (pending): no node agent has registered"), "{why}");
    let why = json(&qm(&["why", &server, "1", "--json"]));
    assert!(why["cause"].as_str().is_some_and(|c| c.starts_with("no node agent")), "{why}");
    assert_eq!(why["report"]["reason"], "unschedulable");
    assert!(why["report"]["attempts"][0]["outcome"]["never_fits"]["nodes"].is_number(), "{why}");
    let job = text(&qm(&["job", &server, "1"]).stdout);
    let labels: Vec<&str> = job.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(labels[..9], ["Name", "Team", "State", "Command", "Flavor", "Devices", "Priority", "Nodes", "Attempts"]);
    assert!(job.contains("Command  python t.py"), "{job}");
    let status = json(&qm(&["status", &server, "--json"]));
    assert_eq!((status["leader"].as_u64(), status["pending_jobs"].as_u64()), (Some(1), Some(1)));
    assert_eq!(status["members"][0]["reachable"], true);
}

#[test]
fn the_examples_apply_and_submit_as_they_are_with_the_usual_classes() {
    let dev = Dev::start();
    let server = dev.flag();
    let classes = json(&qm(&["priority-class", "list", &server, "--json"]));
    let names: Vec<&str> = classes.as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["production", "high", "default", "low"], "highest first");
    let applied = qm(&["apply", "-f", "examples/teams.toml", &server]);
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    let submitted = json(&qm(&["submit", "--file", "examples/jobs.toml", &server, "--json"]));
    assert_eq!(submitted["job_ids"].as_array().map(Vec::len), Some(7), "every job of the file");
    let first = json(&qm(&["job", "1", &server, "--json"]));
    assert_eq!((first["priority_class"].as_str(), first["priority"].as_i64()), (Some("production"), Some(1000)));
    let set = qm(&["priority-class", "set", "urgent", "5000", &server]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    let deleted = qm(&["priority-class", "delete", "urgent", &server]);
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    let again = qm(&["priority-class", "delete", "urgent", &server, "--json"]);
    assert_eq!(again.status.code(), Some(3), "a class that is gone is not found");
    let err: Value = serde_json::from_slice(&again.stderr).expect("a JSON error on stderr");
    assert_eq!(err["error"]["code"], "not_found");
    assert!(err["error"]["message"].as_str().is_some_and(|m| m.contains("urgent")), "{err}");
    let research = json(&qm(&["quota", "get", "research", &server, "--json"]));
    assert_eq!((research[0]["nominal"].as_u64(), research[0]["weight"].as_f64()), (Some(16), Some(1.0)));
    let weighted = ["quota", "set", "--team", "research", "--flavor", "gpu/nvidia-h100-80gb-hbm3", "--nominal", "12"];
    assert!(qm(&[&weighted[..], &["--weight", "3", &server]].concat()).status.success());
    let research = json(&qm(&["quota", "get", "research", &server, "--json"]));
    assert_eq!((research[0]["nominal"].as_u64(), research[0]["weight"].as_f64()), (Some(12), Some(3.0)));
    assert_eq!(json(&qm(&["quota", "list", &server, "--json"])).as_array().map(Vec::len), Some(5));
    assert_eq!(qm(&["quota", "get", "nobody", &server]).status.code(), Some(3));
}

#[test]
fn kinds_and_models_are_checked_against_the_quota_with_the_flavors_named() {
    let dev = Dev::start();
    let server = dev.flag();
    let quota = ["quota", "set", &server, "--team", "ml", "--flavor", "tpu/google-tpu-v5e", "--nominal", "8"];
    assert!(qm(&quota).status.success());
    let tpu = json(&qm(&["submit", &server, "--team", "ml", "--kind", "tpu", "--gpus", "4", "--json", "--", "t"]));
    assert_eq!(tpu["job_ids"][0], 1);
    assert_eq!(json(&qm(&["job", "1", &server, "--json"]))["flavor"], "tpu/*");
    let gpu = qm(&["submit", &server, "--team", "ml", "--model", "nvidia-a10", "--", "t"]);
    assert_eq!(gpu.status.code(), Some(2));
    let err = text(&gpu.stderr);
    assert!(err.contains("(gpu/nvidia-a10); its quota covers tpu/google-tpu-v5e"), "{err}");
    let bad = qm(&["submit", &server, "--team", "ml", "--kind", "npu", "--", "t"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
}

#[test]
fn the_address_comes_from_qm_server_and_a_refusal_is_immediate_and_says_what_to_do() {
    let dev = Dev::start();
    let url = format!("https://{}", dev.addr);
    let status = qm_env(&["status", "--json"], &[("QM_SERVER", &url)]);
    assert_eq!(json(&status)["leader"], 1, "QM_SERVER with an https:// address");
    let other_ca = tempfile::tempdir().unwrap();
    let made = qm(&["admin", "certs", "--dir", other_ca.path().to_str().unwrap(), "--agent", "x=127.0.0.1"]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let ca = other_ca.path().join("ca.pem");
    let wrong = qm_env(&["jobs", &dev.flag()], &[("QM_TLS_CA", ca.to_str().unwrap())]);
    assert_eq!(wrong.status.code(), Some(4), "a replica whose certificate the CA given does not vouch for");
    let err = text(&wrong.stderr);
    assert!(err.contains("UnknownIssuer") && err.contains("not signed by the CA given"), "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let refused = qm_env(&["jobs"], &[("QM_SERVER", &closed)]);
    assert_eq!(refused.status.code(), Some(4));
    let err = text(&refused.stderr);
    assert!(err.contains(&format!("cannot reach a Quartermaster replica at {closed}")), "{err}");
    assert!(err.contains("qm dev") && err.contains("QM_SERVER"), "{err}");
    let flag_wins = qm_env(&["status", "--json", &dev.flag()], &[("QM_SERVER", &closed)]);
    assert_eq!(json(&flag_wins)["leader"], 1, "--server overrides QM_SERVER");
    let missing = qm(&["job", "42", &dev.flag()]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(text(&missing.stderr).contains("no job 42"), "{}", text(&missing.stderr));
    let usage = qm(&["submit", &dev.flag(), "--", "true"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(text(&usage.stderr).contains("--team: required"), "{}", text(&usage.stderr));
    let not_an_address = qm(&["jobs", "--server", "nope"]);
    assert_eq!(not_an_address.status.code(), Some(2));
}

/// A replica that dies under a request: it takes each connection, completes the TLS handshake
/// with a certificate of `dev`'s CA, reads what the client sends (the request included) until
/// the client has waited 500 ms for the answer, and closes the connection.
fn dying_replica(dev: &Dev) -> String {
    use std::io::Read;
    let config = tls_server(dev);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            conn.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
            let tls = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut stream = rustls::StreamOwned::new(tls, conn);
            let mut buf = [0u8; 4096];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    addr
}

/// A TLS server's settings with a certificate of `dev`'s CA (whose key is beside its ca.pem).
fn tls_server(dev: &Dev) -> std::sync::Arc<rustls::ServerConfig> {
    use qm_proto::certs::{Authority, Validity};
    use rustls_pki_types::pem::PemObject;
    let ca = Authority::open_or_create(dev.ca.parent().unwrap(), "", Validity::days(1)).unwrap();
    let who = qm_proto::tls::Identity::Replica(2);
    let (cert, key) = ca.issue(&who, &["127.0.0.1".into()], Validity::days(1)).unwrap();
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    // The provider the replicas' TLS uses (tonic's `tls-ring`); rustls deprecates it for its
    // lack of post-quantum key exchange (docs/decisions.md).
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    std::sync::Arc::new(config)
}

/// A request whose replica dies under it goes to the next `--server` when sending it twice is
/// safe (submissions carry a request id; a second cancel does nothing); a membership change is
/// not sent twice, and the client says its outcome is unknown.
#[test]
fn a_request_whose_replica_dies_under_it_goes_to_the_next() {
    let dev = Dev::start();
    let dying = dying_replica(&dev);
    let both = format!("--server={dying},{}", dev.addr);
    let set =
        qm(&["quota", "set", &both, "--team", "research", "--flavor", "gpu/nvidia-h100-80gb-hbm3", "--nominal", "8"]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    let submitted = qm(&["submit", &both, "--team", "research", "--name", "hello", "--", "python", "t.py"]);
    assert_eq!(text(&submitted.stdout).trim(), "submitted job 1", "{}", text(&submitted.stderr));
    for _ in 0..2 {
        let cancelled = qm(&["cancel", &both, "1"]);
        assert_eq!(text(&cancelled.stdout).trim(), "job 1: cancelled", "{}", text(&cancelled.stderr));
    }
    let listed = json(&qm(&["jobs", &both, "--json"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "one job, whatever the retries");
    let removed = qm(&["admin", "members", "remove", "--id", "2", &both]);
    assert!(!removed.status.success());
    let err = text(&removed.stderr);
    assert!(err.contains(&format!("{dying}: the connection failed before the answer came")), "{err}");
    assert!(err.contains("may or may not have been applied"), "{err}");
}

/// A replica that takes connections and never answers (a paused process), counting them.
fn paused_replica() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&count);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(conn);
        }
    });
    (addr, count)
}

/// A paused replica costs a command one wait: `qm apply` makes a call per class and team, and
/// after the first timed out on the paused replica, the rest go to the one that answered.
/// When none answers, the error names each address with its own cause.
#[test]
fn a_paused_replica_costs_one_wait_per_command_and_every_address_is_explained() {
    let dev = Dev::start();
    let (paused, connections) = paused_replica();
    let both = format!("--server={paused},{}", dev.addr);
    let applied = qm(&["apply", "-f", "examples/teams.toml", &both]);
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1, "tried once, then last");
    let listed = json(&qm(&["teams", "--json", &dev.flag()]));
    assert!(listed.as_array().is_some_and(|teams| !teams.is_empty()), "{listed}");
    let closed = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (a, b) = (closed(), closed());
    let none = qm(&["jobs", &format!("--server={a},{b}")]);
    assert_eq!(none.status.code(), Some(4));
    let err = text(&none.stderr);
    assert!(
        err.contains(&format!("{a}: Connection refused")) && err.contains(&format!("{b}: Connection refused")),
        "{err}"
    );
}

/// Tokens and the audit trail from the command line: a member token written 0600, used for its
/// own team, refused for an admin command (exit code 5, naming the role and the call), listed
/// without its secret, seen in the audit trail, and refused once revoked.
#[test]
fn tokens_and_the_audit_trail_from_the_command_line() {
    let dev = Dev::start();
    let team = ["quota", "set", "--team", "dev", "--flavor", "gpu/nvidia-h100-80gb-hbm3", "--nominal", "8"];
    assert!(qm(&[&team[..], &[&dev.flag()]].concat()).status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alice.token");
    let file = file.to_str().unwrap();
    let created = qm(&["admin", "tokens", "create", "alice", "--team", "dev", "--out", file, &dev.flag()]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let secret = std::fs::read_to_string(file).unwrap();
    let as_alice = |args: &[&str]| qm_env(args, &[("QM_TOKEN_FILE", file)]);
    let who = json(&as_alice(&["admin", "tokens", "whoami", "--json", &dev.flag()]));
    assert_eq!((who["name"].as_str(), who["role"].as_str()), (Some("alice"), Some("member")));
    let submitted = as_alice(&["submit", "--team", "dev", "--gpus", "1", &dev.flag(), "--", "true"]);
    assert!(submitted.status.success(), "{}", text(&submitted.stderr));
    let quota = as_alice(&["quota", "set", "--team", "dev", "--flavor", "gpu/x", "--nominal", "1", &dev.flag()]);
    assert_eq!(quota.status.code(), Some(5));
    assert!(
        text(&quota.stderr).contains("member token \"alice\" may not call AdminService/SetTeam"),
        "{}",
        text(&quota.stderr)
    );
    let listed = text(&qm(&["admin", "tokens", "list", &dev.flag()]).stdout);
    assert!(listed.contains("alice") && listed.contains("teams dev") && !listed.contains(secret.trim()), "{listed}");
    let trail = json(&qm(&["admin", "audit", "--token", "alice", "--json", &dev.flag()]));
    let what: Vec<&str> = trail["records"].as_array().unwrap().iter().filter_map(|r| r["what"].as_str()).collect();
    assert_eq!(what, ["submit 1 job(s) of team dev: job 1"]);
    assert!(qm(&["admin", "tokens", "revoke", "alice", &dev.flag()]).status.success());
    let refused = as_alice(&["jobs", &dev.flag()]);
    assert_eq!(refused.status.code(), Some(5));
    assert!(text(&refused.stderr).contains("the token is unknown or revoked"), "{}", text(&refused.stderr));
}

/// `qm ARGS` against `dev`, started in the background with its output piped, once it said on
/// stderr that it is watching.
fn watching(dev: &Dev, args: &[&str]) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qm"))
        .args(args)
        .arg(dev.flag())
        .env("QM_TOKEN_FILE", &dev.token_file)
        .env("QM_TLS_CA", &dev.ca)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert_eq!(line, "qm: watching job changes\n");
    child
}

#[test]
fn events_and_the_watched_job_table_follow_changes_as_they_happen() {
    use std::io::BufRead;
    let dev = Dev::start();
    let quota =
        ["quota", "set", &dev.flag(), "--team", "research", "--flavor", "gpu/nvidia-h100-80gb-hbm3", "--nominal", "8"];
    assert!(qm(&quota).status.success());
    let events = watching(&dev, &["events", "--json", "--count", "2", "--team", "research"]);
    let mut table = watching(&dev, &["jobs", "--watch"]);
    for name in ["first", "second"] {
        let submitted = qm(&["submit", &dev.flag(), "--team", "research", "--name", name, "--", "true"]);
        assert!(submitted.status.success(), "{}", text(&submitted.stderr));
    }
    let out = events.wait_with_output().unwrap();
    let lines: Vec<Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seen: Vec<(u64, &str)> =
        lines.iter().map(|e| (e["job_id"].as_u64().unwrap(), e["state"].as_str().unwrap())).collect();
    assert_eq!(seen, [(1, "pending"), (2, "pending")], "{lines:?}");
    let mut stdout = std::io::BufReader::new(table.stdout.take().unwrap());
    let mut shown = String::new();
    while !shown.contains("second") {
        assert!(stdout.read_line(&mut shown).unwrap() > 0, "the watched table ended: {shown}");
    }
    assert!(shown.matches("ID  NAME").count() >= 2, "the table was printed again: {shown}");
    let _ = table.kill();
    let _ = table.wait();
}
