//! mapper-virtual: a KubeEdge mapper for simulated devices of random
//! values. See [`kedge_mapper`] and [`kedge_mapper::virtual_device`].

fn main() -> std::process::ExitCode {
    kedge_mapper::main(kedge_mapper::virtual_device::VirtualDriver)
}
