//! edgecore: the Kedge edge component. See [`kedge_edge`].

fn main() -> std::process::ExitCode {
    kedge_runtime::component::main::<kedge_edge::EdgeCore>()
}
