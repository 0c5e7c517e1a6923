//! One line per error for the operator: an error's cause chain, each cause
//! once. Libraries such as kube repeat their source inside their own
//! message, so anyhow's `{:#}` printed a missing kubeconfig three times.

/// `top: cause: cause`, leaving out every cause whose text the line
/// already holds.
pub fn one_line(e: &anyhow::Error) -> String {
    chain_line(e.as_ref())
}

/// An error the API server answered, as an operator reads it: kube's own
/// text carries the whole response as a Rust structure.
fn api_answer(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let kube::Error::Api(st) = e.downcast_ref::<kube::Error>()? else {
        return None;
    };
    let hint = match st.code {
        401 => "; the credentials were not accepted (an expired token or certificate?)",
        403 => {
            "; the user or ServiceAccount lacks that permission: see deploy/rbac.yaml (the agent's ClusterRole podguard; operators' podguard-audit, podguard-rotate, podguard-status)"
        }
        _ => "",
    };
    let message = if st.message.is_empty() {
        "no message"
    } else {
        st.message.as_str()
    };
    Some(format!(
        "the API server answered {} {}: {message}{hint}",
        st.code, st.reason
    ))
}

/// [`one_line`] for any error: it and its sources.
pub fn chain_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let chain = std::iter::successors(Some(e), |e| e.source());
    for cause in chain {
        if let Some(text) = api_answer(cause) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
            // Its source is the same response again.
            break;
        }
        let text = first_line(&cause.to_string());
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

/// A cause's first line with text: a YAML parser's error goes on with a
/// picture of the input under a caret, which does not fit one line (and
/// may show what the file holds).
fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim_end)
        .find(|l| !l.trim().is_empty());
    line.unwrap_or(text).to_string()
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
    fn api_answers_read_as_text_with_a_hint() {
        let status = |code: u16, reason: &str, message: &str| {
            kube::Error::Api(
                kube::core::Status {
                    code,
                    reason: reason.into(),
                    message: message.into(),
                    ..Default::default()
                }
                .boxed(),
            )
        };
        let line = one_line(
            &anyhow::Error::new(status(
                403,
                "Forbidden",
                "nodes is forbidden: User \"bob\" cannot list resource \"nodes\"",
            ))
            .context("listing Nodes"),
        );
        assert_eq!(
            line,
            "listing Nodes: the API server answered 403 Forbidden: nodes is forbidden: User \"bob\" cannot list resource \"nodes\"; the user or ServiceAccount lacks that permission: see deploy/rbac.yaml (the agent's ClusterRole podguard; operators' podguard-audit, podguard-rotate, podguard-status)"
        );
        assert!(!line.contains("Status {"), "{line}");
        let line =
            one_line(&anyhow::Error::new(status(401, "Unauthorized", "")).context("listing Nodes"));
        assert!(
            line.contains("401 Unauthorized: no message; the credentials were not accepted"),
            "{line}"
        );
        let line = one_line(&anyhow::Error::new(status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )));
        assert_eq!(
            line,
            "the API server answered 404 NotFound: the server could not find the requested resource"
        );
    }

    #[test]
    fn a_cause_on_many_lines_keeps_its_first() {
        #[derive(Debug, thiserror::Error)]
        #[error(
            "failed to parse kubeconfig YAML: line 1 column 6: unclosed bracket\n --> <input>:1:6\n  |\n1 | token: [\n  |      ^"
        )]
        struct Parse;
        let line = one_line(&anyhow::Error::new(Parse).context("reading $KUBECONFIG /k"));
        assert_eq!(
            line,
            "reading $KUBECONFIG /k: failed to parse kubeconfig YAML: line 1 column 6: unclosed bracket"
        );
        assert_eq!(one_line(&anyhow::anyhow!("\nsecond")), "second");
    }

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
