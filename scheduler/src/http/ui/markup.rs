//! The dashboard's templates: every page is one `layout` around a body
//! that its page module writes. Text from the cluster (names, labels,
//! messages, images) goes through `escape`, always: a workload named
//! `<script>` must show as text.

use std::fmt::Write as _;

/// `text` safe to put in HTML text or a double-quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as one path segment of a link.
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(byte)),
            other => {
                let _ = write!(out, "%{other:02X}");
            }
        }
    }
    out
}

/// The pages, in the order of the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Cluster,
    Nodes,
    Workloads,
    Events,
}

impl Tab {
    const ALL: [(Tab, &'static str, &'static str); 4] = [
        (Tab::Cluster, "/ui/", "Cluster"),
        (Tab::Nodes, "/ui/nodes", "Nodes"),
        (Tab::Workloads, "/ui/workloads", "Workloads"),
        (Tab::Events, "/ui/events", "Events"),
    ];
}

/// What every page needs besides its body.
#[derive(Debug)]
pub struct Frame {
    pub title: String,
    pub tab: Tab,
    /// The applied index the body was rendered at: the live stream starts
    /// after it, so no change between render and connect is missed.
    pub index: u64,
    /// The server that rendered it, as `id (role)`.
    pub server: String,
}

/// A whole page around `body`.
pub fn layout(frame: &Frame, body: &str) -> String {
    let mut nav = String::new();
    for (tab, href, label) in Tab::ALL {
        let current = if tab == frame.tab { " aria-current=\"page\"" } else { "" };
        let _ = write!(nav, "<a href=\"{href}\"{current}>{label}</a>");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · flotilla</title><link rel=\"stylesheet\" href=\"/ui/assets/style.css\">\
         <script defer src=\"/ui/assets/app.js\"></script></head>\
         <body data-index=\"{index}\"><header><strong>flotilla</strong><nav>{nav}</nav>\
         <span class=\"server\">{server}</span><span id=\"live\" class=\"live\" title=\"live updates\">●</span></header>\
         <main id=\"main\" data-index=\"{index}\">{body}</main></body></html>\n",
        title = escape(&frame.title),
        index = frame.index,
        server = escape(&frame.server),
    )
}

/// The token prompt, shown instead of a page to a browser without a valid
/// token: the token is kept in the browser's session only.
pub fn login(reason: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in · flotilla</title>\
         <link rel=\"stylesheet\" href=\"/ui/assets/style.css\"><script defer src=\"/ui/assets/app.js\"></script></head>\
         <body><main class=\"login\"><h1>flotilla</h1><p class=\"reason\">{reason}</p>\
         <form id=\"login\"><label>API token <input id=\"token\" type=\"password\" autocomplete=\"off\" required></label>\
         <button type=\"submit\">Sign in</button></form>\
         <p class=\"hint\">Create one with <code>flotilla token create --role read</code>. \
         It is kept for this browser session only.</p></main></body></html>\n",
        reason = escape(reason),
    )
}

/// A percentage of `part` in `whole`, for bar widths; 0 when `whole` is 0.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { (part as f64 * 100.0 / whole as f64).min(100.0) }
}

/// A stable colour for a workload, so its replicas look alike on every node.
pub fn hue(name: &str) -> u32 {
    name.bytes().fold(2166136261u32, |h, b| (h ^ u32::from(b)).wrapping_mul(16777619)) % 360
}

/// `ms` ago, in the largest unit that fits.
pub fn age(now_ms: u64, at_ms: u64) -> String {
    let seconds = now_ms.saturating_sub(at_ms) / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_text_cannot_become_markup() {
        assert_eq!(
            escape("<script>alert(\"x\")</script>"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
        );
        assert_eq!(escape("a & 'b'"), "a &amp; &#39;b&#39;");
    }

    #[test]
    fn names_become_safe_path_segments() {
        assert_eq!(path_segment("web-1"), "web-1");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn the_layout_marks_the_current_tab_and_escapes_the_title() {
        let frame = Frame { title: "<x>".into(), tab: Tab::Nodes, index: 9, server: "1 (leader)".into() };
        let page = layout(&frame, "<p>body</p>");
        assert!(page.contains("<a href=\"/ui/nodes\" aria-current=\"page\">Nodes</a>"));
        assert!(page.contains("<title>&lt;x&gt; · flotilla</title>"));
        assert!(page.contains("data-index=\"9\""));
        assert!(page.contains("<p>body</p>"));
    }

    #[test]
    fn bars_never_overflow_and_empty_wholes_are_empty() {
        assert_eq!(percent(1, 0), 0.0);
        assert_eq!(percent(50, 200), 25.0);
        assert_eq!(percent(300, 200), 100.0);
    }

    #[test]
    fn ages_use_the_largest_unit_that_fits() {
        assert_eq!(age(10_000, 5_000), "5s");
        assert_eq!(age(200_000, 0), "3m");
        assert_eq!(age(0, 5_000), "0s", "a clock behind the event says now");
    }
}
