// Types of herald.js (the herald JS client). docs/client-js.md has the guide.

export type Transport = 'websocket' | 'sse' | 'poll';

/** A published message, as every transport delivers it (docs/api.md, the envelope). */
export interface Envelope<T = unknown> {
  event: 'message';
  /** The channel, or "#user" for a message herald sent to the connection's user. */
  channel: string;
  /** The message id (a decimal string: keep it as a string). */
  id: string;
  /** When herald accepted the publish, Unix milliseconds. */
  time: number;
  /** The event name the publisher gave, if any. */
  type?: string;
  /** "base64" when the published body was not UTF-8 and `data` is its base64. */
  encoding?: 'base64';
  data: T;
}

/** Messages after the cursor are gone; `oldest` is the oldest id still retained. */
export interface GapEvent {
  event: 'gap';
  channel: string;
  since: string;
  oldest: string | null;
}

/** A channel was deleted or expired (the client holds it again: a new channel of the name reaches it). */
export interface ClosedEvent {
  event: 'closed';
  channel: string;
  reason: string;
}

export interface ErrorEvent {
  event?: 'error';
  /** A machine name: channel_forbidden, token_expired, slow_consumer, token (getToken failed), shared (sharing could not start)… */
  error: string;
  detail?: string;
  channel?: string;
}

/** Presence: a user joined or left a channel (live only; asked for with `presence: true`). */
export interface PresenceEvent {
  event: 'join' | 'leave';
  channel: string;
  /** The user (a token's `sub`, or what the connect hook named). */
  user: string;
  /** What the token or the connect hook attached to the user, if anything. */
  info?: unknown;
}

/** How publish() and rpc() reject: an Error with herald's error code. */
export interface HeraldError extends Error {
  /**
   * herald's code (rpc_error, hook_failed, too_many_rpc, rpc_unavailable, channel_forbidden,
   * rate_limited…) or the client's: rpc_needs_websocket / publish_needs_websocket (the
   * connection is SSE or long-poll), not_connected (no open WebSocket yet), disconnected
   * (the connection closed before the answer), timeout.
   */
  error: string;
  /** The same as `error`. */
  code: string;
  detail?: string;
}

export interface SubscribeOptions<T = unknown> {
  /** Resume after this cursor (an id, or a per-channel cursor of these channels); "0": all retained history. */
  since?: string;
  onMessage?: (env: Envelope<T>) => void;
  onGap?: (ev: GapEvent) => void;
  onClosed?: (ev: ClosedEvent) => void;
  onError?: (ev: ErrorEvent) => void;
  onJoin?: (ev: PresenceEvent) => void;
  onLeave?: (ev: PresenceEvent) => void;
}

export interface HeraldOptions {
  /** herald's base URL (http: or https:); in a browser, the page's origin by default. */
  url?: string;
  /** An app's name: the client talks to /apps/{app}/… */
  app?: string;
  /** A subscriber token (JWT), when the app wants one. */
  token?: string;
  /** Called for a token before connecting, when one expired or was refused, and before expiry. */
  getToken?: () => Promise<string> | string;
  /** Transports to try, in order. Default: ['websocket', 'sse', 'poll'] ('longpoll' is taken for 'poll'). */
  transports?: Array<Transport | 'longpoll'>;
  /** Backoff between reconnects, ms: from minDelay (250) doubling up to maxDelay (10000), jittered. */
  minDelay?: number;
  maxDelay?: number;
  /** A connection not open after this many ms (5000) counts as failed (blocked). */
  openTimeout?: number;
  /** Seconds a long-poll is held (25). */
  pollTimeout?: number;
  /** A WebSocket implementation (Node before 22 has none: pass one). */
  WebSocket?: unknown;
  /** A fetch implementation (default: globalThis.fetch). */
  fetch?: typeof fetch;
  /**
   * Share one connection with the other tabs of this origin that use the same herald URL,
   * app and token identity (true: the token's claims less its times decide; a string:
   * tabs with the same string share). Needs BroadcastChannel and Web Locks; without them
   * (Node, old browsers, pages that are not a secure context) the client has its own
   * connection, as without this option.
   */
  shared?: boolean | string;
  /** Ask for presence events (`join`, `leave`) of the channels that have presence. */
  presence?: boolean;
  /** ms an rpc() waits for its answer before it rejects with `timeout` (10000). */
  rpcTimeout?: number;
}

export interface HeraldEvents {
  open: { transport: Transport };
  disconnect: { transport: Transport };
  reconnect: { event: 'reconnect'; reason: string };
  expired: ErrorEvent;
  gap: GapEvent;
  error: ErrorEvent;
}

export interface SubscriptionEvents<T> {
  message: Envelope<T>;
  gap: GapEvent;
  closed: ClosedEvent;
  error: ErrorEvent;
  join: PresenceEvent;
  leave: PresenceEvent;
}

export class Subscription<T = unknown> implements AsyncIterable<Envelope<T>> {
  readonly herald: Herald;
  readonly channels: string[];
  readonly closed?: boolean;
  on<K extends keyof SubscriptionEvents<T>>(type: K, fn: (ev: SubscriptionEvents<T>[K]) => void): this;
  off<K extends keyof SubscriptionEvents<T>>(type: K, fn: (ev: SubscriptionEvents<T>[K]) => void): this;
  /** Stops this subscription (its channels leave the connection unless another subscription holds them). */
  close(): void;
  [Symbol.asyncIterator](): AsyncIterator<Envelope<T>>;
}

export class Herald {
  constructor(url: string, opts?: HeraldOptions);
  constructor(opts: HeraldOptions);
  /** The transport of the open connection, or null. */
  readonly transport: Transport | null;
  /** The token in use. */
  readonly token: string | null;
  /** With `shared`: 'leader' (this tab holds the shared connection) or 'follower'; null otherwise. */
  readonly role: 'leader' | 'follower' | null;
  /** Channels to receive; "#user" is the messages herald sends to this connection's user. */
  subscribe<T = unknown>(channels: string | string[], opts?: SubscribeOptions<T>): Subscription<T>;
  /** Publishes over the open WebSocket (server with --ws-publish; key or the token's publish grant). */
  publish(channel: string, data: unknown, opts?: { event?: string; key?: string }): Promise<{ event: 'published'; id: string; subscribers: number }>;
  /**
   * Calls the app's backend (its `rpc` hook) over the open WebSocket: resolves with the
   * answer's `data`, rejects with a HeraldError. A call is never sent twice.
   */
  rpc<R = unknown>(method: string, data?: unknown, opts?: { timeout?: number }): Promise<R>;
  /** The cursor of these channels (all held by default): store it, pass it back as `since`. */
  cursor(channels?: string[]): string | undefined;
  on<K extends keyof HeraldEvents>(type: K, fn: (ev: HeraldEvents[K]) => void): this;
  off<K extends keyof HeraldEvents>(type: K, fn: (ev: HeraldEvents[K]) => void): this;
  /** Closes the connection and every subscription. */
  close(): void;
}

export default Herald;
