'use strict';
// W6 child for node-ipc: connect back to the parent's socket and say "ready".

const path = require('path');

const ipc = require(path.join(__dirname, '..', '.node', 'node_modules', 'node-ipc'));

setTimeout(() => process.exit(3), 30000).unref();

ipc.config.id = 'child';
ipc.config.silent = true;
ipc.connectTo('parent', process.argv[2], () => {
    ipc.of.parent.on('connect', () => ipc.of.parent.emit('ready', process.pid));
});
