// A node-ipc server for the interop tests.
//   node server.mjs VERSION unix PATH EVENTS [DELIMITER]
//   node server.mjs VERSION udp4|tcp PORT EVENTS [DELIMITER]
// EVENTS is a comma-separated list of the event types to listen for; each received one is
// printed as {"ev":"recv","type":..,"data":..}. "echo" is answered to its sender with "echo"
// and the same data. stdin commands: {"cmd":"broadcast","type":..,"data":..},
// {"cmd":"emit","to":{"address":..,"port":..},"type":..,"data":..} (UDP), {"cmd":"stop"}.
import { loadIPC, say, summary, commands } from './_peer.mjs';

const [version, transport, where, events, delimiter] = process.argv.slice(2);
const ipc = await loadIPC(version, delimiter);
ipc.config.id = 'node-server';

if (transport === 'unix') ipc.serve(where);
else if (transport === 'tcp') ipc.serveNet('127.0.0.1', Number(where));
else ipc.serveNet('127.0.0.1', Number(where), transport);

const server = ipc.server;
server.on('start', () => {
    // 9.x UDP fires 'start' right after bind() is called, before the socket listens.
    const handle = server.server;
    const report = () => {
        say({ ev: 'ready', port: transport === 'unix' ? null : handle.address().port });
    };
    if (transport.startsWith('udp')) {
        try { handle.address(); report(); } catch { handle.once('listening', report); }
    } else if (handle.listening) report();
    else handle.once('listening', report);
});
server.on('connect', () => say({ ev: 'connect' }));
server.on('socket.disconnected', (socket, id) => say({ ev: 'disconnected', id: id || null }));
server.on('error', (error) => say({ ev: 'error', message: String(error && error.message) }));
for (const type of events.split(',').filter(Boolean)) {
    server.on(type, (data, socket) => {
        say({ ev: 'recv', type, data: summary(data) });
        if (type === 'echo') server.emit(socket, 'echo', data);
    });
}
commands((command) => {
    if (command.cmd === 'broadcast') server.broadcast(command.type, command.data);
    else if (command.cmd === 'emit') server.emit(command.to, command.type, command.data);
    else if (command.cmd === 'stop') { server.stop(); process.exit(0); }
});
server.start();
