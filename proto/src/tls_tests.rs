use super::*;
use crate::certs::{Authority, Validity};
use std::time::{Duration, SystemTime};

#[test]
fn identities_round_trip_through_their_uri_and_others_are_refused() {
    for who in [Identity::Replica(3), Identity::Node("gpu-07.rack2".into())] {
        assert_eq!(Identity::parse(&who.uri()), Some(who.clone()));
    }
    for uri in ["qm://replica/0", "qm://replica/x", "qm://node/", "qm://node/a/b", "spiffe://replica/1", "qm://job/1"] {
        assert_eq!(Identity::parse(uri), None, "{uri}");
    }
}

#[test]
fn an_issued_certificate_names_its_holder_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::open_or_create(dir.path(), "test CA", Validity::days(1)).unwrap();
    let who = Identity::Node("gpu-01".into());
    let files = ca.issue_to(dir.path(), &who, &["127.0.0.1".into(), "localhost".into()], Validity::days(1)).unwrap();
    let loaded = files.load().unwrap();
    assert_eq!(loaded.identity(), Some(&who));
    assert!(loaded.expires_in() > Duration::from_secs(23 * 3600));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a private key is readable by its owner only");
    let again = Authority::open_or_create(dir.path(), "test CA", Validity::days(1)).unwrap();
    assert_eq!(again.cert_pem(), ca.cert_pem(), "an existing CA is reused, not replaced");
}

#[test]
fn bad_files_are_refused_naming_the_flag_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::open_or_create(dir.path(), "test CA", Validity::days(1)).unwrap();
    let past = Validity {
        from: SystemTime::now() - Duration::from_secs(3 * 86_400),
        until: SystemTime::now() - Duration::from_secs(86_400),
    };
    let files = ca.issue_to(dir.path(), &Identity::Replica(1), &["127.0.0.1".into()], past).unwrap();
    let e = files.load().unwrap_err().to_string();
    assert!(e.starts_with("--tls-cert: ") && e.contains("valid only from"), "{e}");

    let good = ca.issue_to(dir.path(), &Identity::Replica(2), &["127.0.0.1".into()], Validity::days(1)).unwrap();
    std::fs::write(&good.key, "not a key").unwrap();
    let e = good.load().unwrap_err().to_string();
    assert!(e.starts_with("--tls-key: ") && e.contains("not a PEM private key"), "{e}");

    let missing = TlsFiles { ca: dir.path().join("nope.pem"), ..good };
    let e = missing.load().unwrap_err().to_string();
    assert!(e.starts_with("--tls-ca: ") && e.contains("nope.pem"), "{e}");
}

#[test]
fn the_dialer_speaks_one_scheme_and_says_so() {
    let plain = Dialer::plain();
    assert_eq!(plain.endpoint("10.0.0.1:7070").unwrap().uri().to_string(), "http://10.0.0.1:7070/");
    assert_eq!(plain.endpoint("http://h:1/").unwrap().uri().to_string(), "http://h:1/");
    let e = plain.endpoint("https://h:1").unwrap_err().to_string();
    assert!(e.contains("TLS is not configured"), "{e}");
    let tls = Dialer::trusting(Some(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"));
    assert_eq!(tls.endpoint("h:7070").unwrap().uri().to_string(), "https://h:7070/");
    let e = tls.endpoint("http://h:1").unwrap_err().to_string();
    assert!(e.contains("use https://"), "{e}");
    for bad in ["h", "h:port", ":1", "ftp://h:1"] {
        assert!(plain.endpoint(bad).is_err(), "{bad}");
    }
}
