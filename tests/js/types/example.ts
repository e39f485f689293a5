// Uses herald.js through its types (clients/js/herald.d.ts) as an application would;
// tests/js/types.test.mjs compiles it with `tsc --noEmit --strict`. The lines marked
// "expect-error" at the end are misuses the types must refuse: were they too loose
// (any), tsc would report the directive unused and the test would fail.
import Herald, { Envelope, GapEvent, Herald as NamedHerald, HeraldError, PresenceEvent, Subscription } from '../../../clients/js/herald.js';

interface Score {
  home: number;
  away: number;
}

const h: Herald = new NamedHerald('https://push.example.com', { app: 'shop', shared: true, transports: ['websocket', 'longpoll'] });
const h2 = new Herald({ url: 'https://push.example.com', getToken: async () => 'a.b.c', shared: 'user-42', minDelay: 100 });

const sub: Subscription<Score> = h.subscribe<Score>(['scores', 'news'], {
  since: '0',
  onGap: (g: GapEvent) => console.log(g.channel, g.oldest),
});
sub.on('message', (m: Envelope<Score>) => console.log(m.id.length, m.data.home + m.data.away));
sub.on('closed', (c) => console.log(c.reason));
h.on('open', (e) => console.log(e.transport === 'websocket'));
h.on('error', (e) => console.log(e.error, e.detail));

// Users, presence, rpc.
interface Chat {
  from: string;
  text: string;
}
const h3 = new Herald('https://push.example.com', { presence: true, rpcTimeout: 5000 });
h3.subscribe<Chat>('#user', { onMessage: (m) => console.log(m.channel, m.data.from, m.data.text) });
const room = h3.subscribe<Chat>(['room.lobby'], { onJoin: (e: PresenceEvent) => console.log(e.user, e.info) });
room.on('leave', (e) => console.log(e.event === 'leave', e.channel, e.user));
h3.rpc<{ id: string }>('send', { text: 'hi' }, { timeout: 2000 }).then(
  (r) => console.log(r.id.length),
  (e: HeraldError) => console.log(e.error, e.code, e.detail),
);

async function main(): Promise<void> {
  for await (const m of h2.subscribe<Score>('scores')) console.log(m.data.away);
  const ack = await h.publish('scores', { home: 1, away: 0 }, { event: 'goal' });
  console.log(ack.id, ack.subscribers, h.role === 'leader', h.cursor(['scores']) ?? 'none');
  sub.close();
  h.close();
}
void main();

// @ts-expect-error: a transport herald does not have
new Herald('https://x', { transports: ['carrier-pigeon'] });
// @ts-expect-error: shared is a flag or a group name
new Herald('https://x', { shared: 1 });
// @ts-expect-error: no such event
h.on('opened', () => {});
// @ts-expect-error: data is a Score, not a string
sub.on('message', (m) => m.data.toUpperCase());
// @ts-expect-error: role is read-only
h.role = 'leader';
// @ts-expect-error: a presence event has no data
room.on('join', (e) => e.data);
// @ts-expect-error: the rpc method is a string
h3.rpc(42);
// @ts-expect-error: the answer is typed as asked
h3.rpc<{ id: string }>('send').then((r) => r.id.toFixed());
