//! `podguard-cni`: the CNI plugin.
fn main() {
    eprintln!("podguard-cni is not built yet (issue 5)");
    std::process::exit(1);
}
