//! The dashboard in a real browser: headless Chromium (Debian's `chromium`), driven through
//! WebDriver (`chromedriver`, from `chromium-driver`), against a live `qm dev` whose agent
//! reads a captured busy H100. It signs in as a user would, checks each page's numbers against
//! the API (through the CLI's JSON), checks who may see what, and saves a screenshot of each
//! page under `target/tmp/dashboard/`. `.ci/run` installs both packages; `QM_CHROMIUM` and
//! `QM_CHROMEDRIVER` point elsewhere.

mod common;

use common::{qm, submit, text, wait_for, Dev};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BUSY_H100: &str = "agent/testdata/nvml/h100-80gb-hbm3-busy/nvml-busy-query.csv";
const FLAVOR: &str = "gpu/nvidia-h100-80gb-hbm3";

/// A chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Self {
        let program = std::env::var("QM_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut child = Command::new(&program)
                .arg(format!("--port={port}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("{program}: {e}; install Debian's chromium and chromium-driver, as .ci/run does")
                });
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            while out.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("started successfully") {
                line.clear();
            }
            if line.contains("started successfully") {
                std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
                return Self { child, url: format!("http://127.0.0.1:{port}") };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("chromedriver did not start on any of five free ports");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session with an empty profile.
async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let binary = std::env::var("QM_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let caps = json!({ "goog:chromeOptions": { "binary": binary, "args": args } });
    let caps = caps.as_object().unwrap().clone().into_iter().collect();
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(caps).connect(&driver.url).await.expect("a browser session")
}

/// `qm ARGS --json` against `dev`, parsed.
fn api(dev: &Dev, args: &[&str]) -> Value {
    let out = qm(&[args, &["--json", &dev.flag()]].concat());
    assert!(out.status.success(), "qm {args:?}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The text of the element whose `data-k` is `key`.
async fn shown(c: &Client, key: &str) -> String {
    let css = format!("[data-k=\"{key}\"]");
    c.find(Locator::Css(&css)).await.unwrap_or_else(|e| panic!("{key} is shown: {e}")).text().await.unwrap()
}

async fn number(c: &Client, key: &str) -> u64 {
    let t = shown(c, key).await;
    t.trim().parse().unwrap_or_else(|_| panic!("{key} shows a number, not {t:?}"))
}

/// Saves the page as `name.png` and returns where.
async fn screenshot(c: &Client, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(&path, png).unwrap();
    path
}

/// Loads `url` until the element `css` shows `want` (readings and the explained cycle arrive
/// within seconds of a job's start).
async fn until_shown(c: &Client, url: &str, key: &str, want: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        c.goto(url).await.unwrap();
        let css = format!("[data-k=\"{key}\"]");
        let text = match c.find(Locator::Css(&css)).await {
            Ok(e) => e.text().await.unwrap(),
            Err(_) => String::new(),
        };
        if want(&text) {
            return text;
        }
        assert!(Instant::now() < until, "{url}: {key} never showed what was expected (last {text:?})");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Signs in through the form, and waits until the browser landed on the cluster page (the
/// cookie is set by then).
async fn sign_in(c: &Client, base: &str, secret: &str) {
    c.goto(&format!("{base}/ui/login")).await.unwrap();
    c.find(Locator::Css("#token")).await.unwrap().send_keys(secret).await.unwrap();
    c.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while c.current_url().await.unwrap().path() != "/ui/" || c.find(Locator::Css("nav .who")).await.is_err() {
        assert!(Instant::now() < until, "signing in did not lead to the cluster page: {}", c.source().await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_page_shows_what_the_api_says_to_whom_may_see_it() {
    let dev = Dev::with_capture(BUSY_H100);
    let running =
        submit(&dev, &["--gpus", "1", "--name", "trainer", "--", "sh", "-c", "echo epoch 1 of 90; sleep 120"]);
    wait_for(&dev, running, &["running"]);
    let waiting = submit(&dev, &["--gpus", "1", "--name", "next", "--", "true"]);
    let huge = submit(&dev, &["--gpus", "2", "--name", "huge", "--", "true"]);
    let base = format!("http://{}", dev.http);
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;

    // Nothing without a token: the sign-in page.
    c.goto(&format!("{base}/ui/")).await.unwrap();
    assert!(c.find(Locator::Css("#token")).await.is_ok(), "the sign-in page asks for a token");
    screenshot(&c, "sign-in").await;
    let admin = std::fs::read_to_string(&dev.token_file).unwrap();
    sign_in(&c, &base, admin.trim()).await;

    // The cluster: devices, jobs and the team against quota, as the API counts them.
    until_shown(&c, &format!("{base}/ui/"), &format!("team:dev:{FLAVOR}:utilization"), |t| t == "100%").await;
    let status = api(&dev, &["status"]);
    let capacity = &status["capacity"][0];
    assert_eq!(capacity["flavor"], FLAVOR);
    assert_eq!(number(&c, &format!("flavor:{FLAVOR}:total")).await, capacity["total"].as_u64().unwrap());
    assert_eq!(number(&c, &format!("flavor:{FLAVOR}:allocated")).await, capacity["used"].as_u64().unwrap());
    assert_eq!(number(&c, &format!("flavor:{FLAVOR}:idle")).await, 0, "the busy GPU is not idle");
    assert_eq!(number(&c, "jobs:pending").await, status["pending_jobs"].as_u64().unwrap());
    assert_eq!(number(&c, "jobs:running").await, status["running_jobs"].as_u64().unwrap());
    let team = &api(&dev, &["teams"])[0];
    for (column, field) in
        [("nominal", "nominal"), ("allocated", "used"), ("borrowed", "borrowed"), ("pending", "pending_jobs")]
    {
        let key = format!("team:dev:{FLAVOR}:{column}");
        assert_eq!(number(&c, &key).await, team[field].as_u64().unwrap(), "{column}");
    }
    screenshot(&c, "cluster").await;

    // The queue: the pending jobs, each with the reason `qm why` gives.
    let reason = until_shown(&c, &format!("{base}/ui/queue"), &format!("reason:{huge}"), |t| !t.is_empty()).await;
    let rows = c.find_all(Locator::Css("tr[data-job]")).await.unwrap();
    let mut ids = Vec::new();
    for row in rows {
        ids.push(row.attr("data-job").await.unwrap().unwrap().parse::<u64>().unwrap());
    }
    assert_eq!(ids, vec![waiting, huge], "the queue holds the pending jobs, oldest first");
    assert!(reason.starts_with(&format!("borrowing on {FLAVOR}")), "two GPUs are beyond the quota of one: {reason}");
    assert_eq!(reason, api(&dev, &["why", &huge.to_string()])["cause"], "the page and `qm why` agree");
    let next = shown(&c, &format!("reason:{waiting}")).await;
    assert_eq!(next, api(&dev, &["why", &waiting.to_string()])["cause"]);
    screenshot(&c, "queue").await;

    // The nodes: the GPU, its holder and its reading, as the node list shows them.
    c.goto(&format!("{base}/ui/nodes")).await.unwrap();
    let node = &api(&dev, &["nodes"])[0];
    let device = node["telemetry"][0]["device"].as_str().unwrap().to_owned();
    let key = |c: &str| format!("device:dev-node:{device}:{c}");
    assert_eq!(shown(&c, &key("job")).await, format!("job {running}"));
    assert_eq!(shown(&c, &key("health")).await, "healthy");
    let pct = node["telemetry"][0]["utilization_pct"].as_u64().unwrap();
    assert_eq!(shown(&c, &key("utilization")).await, format!("{pct}%"));
    screenshot(&c, "nodes").await;

    // A job's page: its state, command, devices and the end of its output, read from its agent.
    let job_page = format!("{base}/ui/jobs/{running}");
    until_shown(&c, &job_page, "job:output", |t| t.contains("epoch 1 of 90")).await;
    assert_eq!(shown(&c, "job:state").await, api(&dev, &["job", &running.to_string()])["state"]);
    let page = c.source().await.unwrap();
    assert!(page.contains("sleep 120") && page.contains(&device), "command and device shown");
    screenshot(&c, "job").await;

    // Signed out, the pages ask for a token again.
    c.find(Locator::Css("nav form button")).await.unwrap().click().await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while c.current_url().await.unwrap().path() != "/ui/login" {
        assert!(Instant::now() < until, "signing out did not lead to the sign-in page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.goto(&format!("{base}/ui/")).await.unwrap();
    assert!(c.find(Locator::Css("#token")).await.is_ok(), "signed out");

    // A member of another team sees the cluster, and the job without its command.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("other.token");
    let made =
        qm(&["admin", "tokens", "create", "olga", "--team", "other", "--out", file.to_str().unwrap(), &dev.flag()]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    sign_in(&c, &base, std::fs::read_to_string(&file).unwrap().trim()).await;
    c.goto(&format!("{base}/ui/jobs/{running}")).await.unwrap();
    let page = c.source().await.unwrap();
    assert!(page.contains("another team's job") && !page.contains("sleep 120"), "the command is hidden: {page}");
    assert!(page.contains("its output is theirs") && !page.contains("epoch 1"), "the output is hidden");

    // Revoked, the token opens nothing more.
    assert!(qm(&["admin", "tokens", "revoke", "olga", &dev.flag()]).status.success());
    c.goto(&format!("{base}/ui/")).await.unwrap();
    let page = c.source().await.unwrap();
    assert!(page.contains("the token is unknown or revoked"), "{page}");
    c.close().await.unwrap();
}
