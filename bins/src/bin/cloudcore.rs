//! cloudcore: the Kedge cloud component. See [`kedge_cloud`].

fn main() -> std::process::ExitCode {
    kedge_runtime::component::main::<kedge_cloud::CloudCore>()
}
