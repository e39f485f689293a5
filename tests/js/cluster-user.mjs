// The JS client's #user on herald nodes sharing a Redis Cluster (ids per channel: the
// cursors are per channel, the user's position last), each reconnect going to the other
// node through a round-robin proxy. Not a *.test.mjs: tests/integration/test_js_client.py
// starts the cluster and the nodes and runs it with
//   HERALD_CLUSTER=http://node1,http://node2 node --test tests/js/cluster-user.mjs
// (the nodes with --token-secret sekrit and short connection lifetimes).
import { after, test } from 'node:test';

import { Herald } from '../../clients/js/herald.js';
import { blockingProxy, jwt, kit, userSoak } from './support.mjs';

const urls = (process.env.HERALD_CLUSTER || '').split(',').filter(Boolean);
const { cleanup, client } = kit(after, Herald);

for (const t of ['websocket', 'sse', 'poll']) {
  test(`#user on a Redis Cluster over ${t}, each reconnect to the other node: nothing lost or duplicated`, { timeout: 120000 }, async () => {
    if (urls.length < 2) throw new Error('HERALD_CLUSTER names no two nodes: run through tests/integration/test_js_client.py');
    const p = await blockingProxy(urls);
    cleanup.push(() => new Promise((ok) => { p.closeAllConnections(); p.close(ok); }));
    const token = jwt('sekrit', { sub: 'u1', channels: ['**'], exp: Math.floor(Date.now() / 1000) + 600 });
    await userSoak(client(p.url, { transports: [t], token }), t, urls[0], 20, `redis-cluster/${t}`);
  });
}
