//! One line per error for the operator: an error's cause chain, each cause
//! once. Libraries such as kube repeat their source inside their own
//! message, so anyhow's `{:#}` printed a missing kubeconfig three times.

/// `top: cause: cause`, leaving out every cause whose text the line
/// already holds.
pub fn one_line(e: &anyhow::Error) -> String {
    chain_line(e.as_ref())
}

/// [`one_line`] for any error: it and its sources.
pub fn chain_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let chain = std::iter::successors(Some(e), |e| e.source());
    for cause in chain {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to infer config: kubeconfig: ({0})")]
    struct Infer(#[source] Read);

    #[derive(Debug, thiserror::Error)]
    #[error("failed to read kubeconfig from '/nonexistent': No such file or directory")]
    struct Read(#[source] std::io::Error);

    #[test]
    fn each_cause_appears_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let io_text = io.to_string();
        let e = anyhow::Error::new(Infer(Read(io))).context("connecting to the Kubernetes API");
        let line = one_line(&e);
        assert_eq!(
            line.matches("failed to read kubeconfig").count(),
            1,
            "{line}"
        );
        assert!(line.starts_with("connecting to the Kubernetes API: failed to infer config"));
        // A cause not yet in the line is kept.
        assert!(line.ends_with(&io_text), "{line}");
        assert_eq!(
            one_line(&anyhow::anyhow!("plain")),
            "plain",
            "a single error is just its text"
        );
    }
}
