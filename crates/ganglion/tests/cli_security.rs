//! The binary's security, as a user meets it: `ganglion auth token` mints what the config
//! lists, the CLI reaches a TLS server with a CA and a token, and an open server refuses
//! an address beyond loopback.

mod common;

use std::process::Command;

use common::{BIN, Served, json, offline, serve_config};

/// Runs a client command against `server` with `extra` flags and environment.
fn ganglion_as(server: &Served, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--server", server.grpc.trim_start_matches("http://")])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_reaches_a_tls_server_with_a_minted_token() {
    let dir = tempfile::tempdir().unwrap();
    // A CA and the server's certificate.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.path().join("ca.pem"),
        dir.path().join("server.pem"),
        dir.path().join("server.key"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    // Client certificates: one naming the identity `cli`, one naming nobody.
    for name in ["cli", "stranger"] {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    let (ok, out, err) = offline(&["auth", "token", "cli", "--output", "json"]);
    assert!(ok, "{err}");
    let minted = json(&out);
    let token = minted["token"].as_str().unwrap().to_owned();
    let hash = minted["hash"].as_str().unwrap();
    assert!(
        token.starts_with("gng_") && hash.starts_with("sha256:"),
        "{out}"
    );
    let (ok, table, _) = offline(&["auth", "token", "cli"]);
    assert!(
        ok && table.contains("auth.identities.cli.tokens"),
        "{table}"
    );
    let (ok, _, err) = offline(&["auth", "token", "not a name"]);
    assert!(!ok && err.contains("not an identity name"), "{err}");

    let yaml = format!(
        "server:\n  tls:\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n    grpc_client_certs: optional\nauth:\n  identities:\n    cli:\n      tokens: [\"{hash}\"]\n      permissions:\n        publish: {{ allow: [\"game.>\"] }}\n        monitor: true\n",
        cert_file.display(),
        key_file.display(),
        ca_file.display(),
    );
    let data = dir.path().join("data");
    let server = serve_config(&data, &yaml, &[], &[]);
    let ca = ca_file.display().to_string();
    let tls = ["--tls-ca", ca.as_str()];

    let publish = |env: &[(&str, &str)]| {
        ganglion_as(
            &server,
            &[&["publish", "game.round", r#"{"round":1}"#][..], &tls[..]].concat(),
            env,
        )
    };
    let (ok, out, err) = publish(&[("GANGLION_TOKEN", &token)]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = publish(&[]);
    assert!(!ok && err.contains("unauthenticated"), "{err}");
    let (ok, _, err) = publish(&[("GANGLION_TOKEN", "gng_wrong")]);
    assert!(
        !ok && err.contains("the bearer token is not valid"),
        "{err}"
    );
    // The token from a file works too; the monitor permission lists topics.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let file = token_file.display().to_string();
    let (ok, out, err) = ganglion_as(
        &server,
        &[
            &["topics", "--output", "json", "--token-file", file.as_str()][..],
            &tls[..],
        ]
        .concat(),
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.contains("game.round"), "{out}");

    // Rotation without a restart: list a second token beside the first, then drop the
    // first. The server reloads its config file on its own.
    let (_, out, _) = offline(&["auth", "token", "cli", "--output", "json"]);
    let second = json(&out);
    let (token2, hash2) = (
        second["token"].as_str().unwrap().to_owned(),
        second["hash"].as_str().unwrap().to_owned(),
    );
    let with = |hashes: &str| yaml.replace(&format!("[\"{hash}\"]"), &format!("[{hashes}]"));
    let until = |what: &str, token: &str, want_ok: bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (ok, _, err) = publish(&[("GANGLION_TOKEN", token)]);
            if ok == want_ok {
                return;
            }
            if std::time::Instant::now() > deadline {
                let log: Vec<String> = server.log.try_iter().collect();
                panic!("{what}: {err}\nserver log:\n{}", log.join("\n"));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    std::fs::write(
        data.with_extension("yaml"),
        with(&format!("\"{hash}\", \"{hash2}\"")),
    )
    .unwrap();
    until("the new token accepted", &token2, true);
    let (ok, _, err) = publish(&[("GANGLION_TOKEN", &token)]);
    assert!(ok, "the old token still works during the rollover: {err}");
    std::fs::write(data.with_extension("yaml"), with(&format!("\"{hash2}\""))).unwrap();
    until("the old token refused", &token, false);
    let (ok, _, err) = publish(&[("GANGLION_TOKEN", &token2)]);
    assert!(ok, "{err}");

    // mTLS: the certificate names the identity, no token needed; one naming nobody is
    // refused.
    let with_certificate = |name: &str| {
        let (cert, key) = (
            dir.path().join(format!("{name}.pem")).display().to_string(),
            dir.path().join(format!("{name}.key")).display().to_string(),
        );
        ganglion_as(
            &server,
            &[
                &[
                    "publish",
                    "game.round",
                    "{}",
                    "--tls-cert",
                    &cert,
                    "--tls-key",
                    &key,
                ][..],
                &tls[..],
            ]
            .concat(),
            &[],
        )
    };
    let (ok, _, err) = with_certificate("cli");
    assert!(ok, "{err}");
    let (ok, _, err) = with_certificate("stranger");
    assert!(!ok && err.contains("names no identity"), "{err}");

    // Without the CA the server's certificate is not trusted.
    let (ok, _, err) = ganglion_as(
        &server,
        &["topics", "--tls-ca", "/dev/null"],
        &[("GANGLION_TOKEN", &token)],
    );
    assert!(!ok, "{err}");
}

#[test]
fn an_open_server_refuses_to_listen_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("open.yaml");
    std::fs::write(&config, "server:\n  grpc_addr: 0.0.0.0:0\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--http-addr", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("server.grpc_addr") && err.contains("allow_anonymous"),
        "{err}"
    );
    // Said explicitly, it starts, and warns what that means.
    std::fs::write(
        &config,
        "server:\n  grpc_addr: 0.0.0.0:0\n  allow_anonymous: true\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--http-addr", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut warned = false;
    for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
        warned |= line.contains("no auth.identities configured");
        if line.contains("ganglion serving") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no warning about the open server");
}
