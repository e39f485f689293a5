# The chat's backend: serves the page, gives it a herald token, answers herald's hooks.
# python3 backend.py  (herald --token-secret s3cret --webhook-url http://127.0.0.1:8000/hook)
import base64, hashlib, hmac, json, os, time, urllib.parse, urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

SECRET = b"s3cret"  # herald's --token-secret: signs the tokens, and herald's hook calls
HERALD = os.environ.get("HERALD_URL", "http://127.0.0.1:8080")
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

def token(user):  # a real login checks a password first; here anyone may be anyone
    claims = {"sub": user, "channels": ["room.*"], "exp": int(time.time()) + 3600}
    signed = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    return signed + "." + b64(hmac.new(SECRET, signed.encode(), hashlib.sha256).digest())

def api(path, doc=None, method=None):  # herald's API (from loopback: no key needed)
    data = json.dumps(doc).encode() if doc is not None else None
    with urllib.request.urlopen(urllib.request.Request(HERALD + path, data, method=method)) as r:
        return json.load(r)

class Backend(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: herald reuses its connections to us
    disable_nagle_algorithm = True

    def do_GET(self):  # GET /token?user=NAME, else the page and its files
        if not self.path.startswith("/token?user="): return super().do_GET()
        self.answer(token(urllib.parse.unquote(self.path[12:])).encode(), "text/plain")

    def do_POST(self):  # herald's hooks: connect, rpc "send" and "who" (the rest: allowed)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        sig = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig, self.headers.get("X-Herald-Signature", "")):
            return self.send_error(401, "bad signature")
        ev, out = json.loads(body), {"result": "allow"}
        if ev["event"] == "connect":  # the user is the token's: attach its display name,
            out["info"] = {"name": str(ev["user"]).capitalize()}  # and have the room keep
            api("/api/channels/room.lobby", {"presence": True}, "PUT")  # who is in it
        elif ev["event"] == "rpc" and ev["method"] == "who":  # who is in the room now
            out = {"data": api("/api/channels/room.lobby/presence")["users"]}
        elif ev["event"] == "rpc" and ev["method"] == "send":  # from: herald's word, not the page's
            data = ev["data"] if isinstance(ev["data"], dict) else {}  # the page's: any JSON
            msg, to = {"from": ev["info"]["name"], "text": str(data.get("text", ""))[:500]}, data.get("to")
            doc = ({"users": list({str(to), ev["user"]}), "data": {**msg, "to": to}} if to  # both users' #user
                   else {"channels": ["room.lobby"], "data": msg})
            out = {"data": api("/api/publish", doc)}  # {"id":…,"subscribers":…}
        elif ev["event"] == "rpc":
            out = {"error": "unknown method " + ev["method"]}
        self.answer(json.dumps(out).encode(), "application/json")

    def answer(self, data, ctype):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

os.chdir(os.path.dirname(os.path.abspath(__file__)))  # the page, index.html, is beside us
ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", 8000))), Backend).serve_forever()
