// A node-ipc client for the interop tests.
//   node client.mjs VERSION unix ID PATH EVENTS [DELIMITER]
//   node client.mjs VERSION tcp ID PORT EVENTS [DELIMITER]
// ID is the server's id (the key in ipc.of). Each received event listed in EVENTS is printed as
// {"ev":"recv","type":..,"data":..}; lifecycle events as {"ev":"connect"}, {"ev":"disconnect"}.
// stdin commands: {"cmd":"emit","type":..,"data":..}, {"cmd":"emit_many","type":..,"data":[..]}
// (one emit per item, in one tick: several frames per write), {"cmd":"exit"}.
import { loadIPC, say, summary, commands } from './_peer.mjs';

const [version, transport, id, where, events, delimiter] = process.argv.slice(2);
const ipc = await loadIPC(version, delimiter);
ipc.config.id = 'node-client';

const ready = (client) => {
    client.on('connect', () => say({ ev: 'connect' }));
    client.on('disconnect', () => say({ ev: 'disconnect' }));
    client.on('error', (error) => say({ ev: 'error', message: String(error && error.message) }));
    for (const type of events.split(',').filter(Boolean)) {
        client.on(type, (data) => say({ ev: 'recv', type, data: summary(data) }));
    }
};
if (transport === 'unix') ipc.connectTo(id, where, () => ready(ipc.of[id]));
else ipc.connectToNet(id, '127.0.0.1', Number(where), () => ready(ipc.of[id]));

commands((command) => {
    const client = ipc.of[id];
    if (command.cmd === 'emit') client.emit(command.type, command.data);
    else if (command.cmd === 'emit_many') for (const data of command.data) client.emit(command.type, data);
    else if (command.cmd === 'exit') { ipc.disconnect(id); process.exit(0); }
});
