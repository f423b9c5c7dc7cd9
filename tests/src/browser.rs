//! A real browser for the dashboard's tests: Debian's headless `chromium`,
//! driven through `chromedriver` with the W3C WebDriver protocol, which is
//! plain JSON over HTTP, so the harness speaks it with the reqwest client
//! it already has. The driver and the browser run in a process group of
//! their own and are killed with it when the `Browser` is dropped, also
//! when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::binary::free_port;
use crate::wait::wait_until;

/// Where Debian puts them (`apt-get install chromium chromium-driver`);
/// the build script compiles the browser suites as ignored where they are
/// missing, and fails under FLOTILLA_REQUIRE_DOCKER=1 (CI).
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`: every command's prefix.
    session: String,
    /// The browser's profile: a fresh one per test, deleted on drop.
    _profile: TempDir,
}

impl Browser {
    /// A headless browser with an empty profile. It trusts any certificate:
    /// the cluster's CA is made per test and a browser has no flag to add
    /// one CA alone.
    pub async fn start() -> Browser {
        let port = free_port();
        let mut command = Command::new(CHROMEDRIVER);
        command.arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command.spawn().expect("chromedriver starts");
        // A command that does not answer in a minute is a hung browser: fail, do not wait forever.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().expect("a profile dir");
        let mut browser = Browser { driver, http, session: String::new(), _profile: profile };
        wait_until(Duration::from_secs(20), "chromedriver ready", || async {
            let status: Value =
                browser.http.get(format!("{base}/status")).send().await.ok()?.json().await.ok()?;
            status["value"]["ready"].as_bool().filter(|ready| *ready)
        })
        .await;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--no-proxy-server",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            },
        }}});
        let created: Value = browser
            .http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("a JSON answer");
        let id = created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}"));
        browser.session = format!("{base}/session/{id}");
        browser
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value =
            request.send().await.expect("chromedriver answers").json().await.expect("a JSON answer");
        if answer["value"]["error"].is_string() {
            panic!("WebDriver {path}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    /// Loads `url` and waits until it has loaded.
    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.command(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": script, "args": args })))
            .await
    }

    /// Waits until `script` returns something other than null or false, and returns it.
    pub async fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Value {
        wait_until(timeout, what, || async {
            let value = self.run(script, json!([])).await;
            (!value.is_null() && value != Value::Bool(false)).then_some(value)
        })
        .await
    }

    /// The WebDriver id of the first element that matches `selector`.
    async fn element(&self, selector: &str) -> String {
        let request = json!({ "using": "css selector", "value": selector });
        let element = self.command(reqwest::Method::POST, "/element", Some(request)).await;
        element
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element matches {selector}"))
            .to_owned()
    }

    /// Clicks the first element that matches `selector`, as a user would.
    pub async fn click(&self, selector: &str) {
        let id = self.element(selector).await;
        self.command(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({}))).await;
    }

    /// Types `text` into the element that matches `selector`.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let id = self.element(selector).await;
        self.command(reqwest::Method::POST, &format!("/element/{id}/value"), Some(json!({ "text": text })))
            .await;
    }

    /// Saves what the browser shows as a PNG at `path`.
    pub async fn screenshot(&self, path: &Path) {
        let data = self.command(reqwest::Method::GET, "/screenshot", None).await;
        let png = decode_base64(data.as_str().expect("a base64 screenshot")).expect("valid base64");
        std::fs::write(path, png).expect("the screenshot is written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser is the driver's child, in the driver's process group.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.driver.id())]).status();
        let _ = self.driver.wait();
    }
}

/// Where a test's screenshots go: `target/dashboard-screenshots/`, kept
/// after the run as its artifacts.
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshot dir");
    dir
}

/// Standard base64 (what WebDriver sends screenshots in).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().take_while(|c| *c != b'=').collect();
        let mut word = 0u32;
        for (i, c) in data.iter().enumerate() {
            word |= value(*c)? << (18 - 6 * i);
        }
        let produced = data.len().saturating_sub(1);
        out.extend_from_slice(&word.to_be_bytes()[1..1 + produced]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::decode_base64;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGVsbG8h").as_deref(), Some(&b"hello!"[..]));
        assert_eq!(decode_base64("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(decode_base64("a$==").as_deref(), None);
    }
}
