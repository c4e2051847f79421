"""A Modbus TCP device for the mapper tests.

Usage: modbus_server.py PORT

Serves on 127.0.0.1:PORT (any unit id) with this data, addresses from 0:

* holding registers: [0, 0, 235, 0, ...]
* input registers:   [0, 77, 0, ...]
* coils:             [0, 0, 0, 1, 0, ...]
* discrete inputs:   all 0

Prints "ready" on standard output once it accepts connections, then serves
until killed. Written against pymodbus 3.0.
"""

import asyncio
import sys

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.server.async_io import ModbusTcpServer

SIZE = 32


def block(values):
    """A data block starting at address 0, padded with zeros."""
    return ModbusSequentialDataBlock(0, values + [0] * (SIZE - len(values)))


async def serve(port):
    """Serves the data on 127.0.0.1:port."""
    device = ModbusSlaveContext(
        di=block([]),
        co=block([0, 0, 0, 1]),
        hr=block([0, 0, 235]),
        ir=block([0, 77]),
        zero_mode=True,
    )
    context = ModbusServerContext(slaves=device, single=True)
    server = ModbusTcpServer(context, address=("127.0.0.1", port))
    serving = asyncio.ensure_future(server.serve_forever())
    await server.serving
    print("ready", flush=True)
    await serving


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
