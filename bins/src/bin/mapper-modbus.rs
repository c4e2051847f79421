//! mapper-modbus: a KubeEdge mapper for Modbus TCP and RTU devices. See
//! [`kedge_mapper`] and [`kedge_mapper::modbus`].

fn main() -> std::process::ExitCode {
    kedge_mapper::main(kedge_mapper::modbus::ModbusDriver::default())
}
