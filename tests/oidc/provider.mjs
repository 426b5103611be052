// A real OpenID provider (npm oidc-provider) for vitalbridge's federation tests: an
// organization's own identity server, as a clinic or distributor would run it.
//
// It issues JWT access tokens (RFC 9068, through resource indicators, RFC 8707) with the
// client_credentials grant, carrying the role and organization claims vitalbridge is configured
// to read. Configuration comes from the environment:
//   OIDC_CLIENTS   JSON [{"client_id","client_secret","scope","claims":{…}}]
//   OIDC_RESOURCES JSON {"<resource URL>": "<scopes it grants>"}
//   OIDC_TTL       access token lifetime in seconds (default 300)
// It prints `listening <port>` once it serves. Test-only control endpoints rotate its keys:
//   POST /_test/rotate  a new signing key signs from now on; the old one stays published
//   POST /_test/retire  only the newest key stays published
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const clients = JSON.parse(process.env.OIDC_CLIENTS || '[]');
const resources = JSON.parse(process.env.OIDC_RESOURCES || '{}');
const ttl = Number(process.env.OIDC_TTL || 300);
const claimsOf = Object.fromEntries(clients.map((c) => [c.client_id, c.claims || {}]));

let keys = [];
let generation = 0;

function newKey() {
  generation += 1;
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `test-key-${generation}`, alg: 'RS256', use: 'sig' };
}

function build(issuer) {
  const provider = new Provider(issuer, {
    clients: clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: c.scope,
    })),
    jwks: { keys },
    // Every scope a client may ask for must be one the provider knows.
    scopes: ['openid', ...new Set(clients.flatMap((c) => (c.scope || '').split(' ')).filter(Boolean))],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => Object.keys(resources)[0],
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => {
          if (!(resource in resources)) {
            throw new Provider.errors.InvalidTarget();
          }
          return {
            scope: resources[resource],
            audience: resource,
            accessTokenTTL: ttl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    extraTokenClaims: (ctx, token) => claimsOf[token.clientId],
  });
  provider.proxy = false;
  return provider;
}

let handler = () => {};
const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/_test/rotate') {
    keys = [newKey(), ...keys];
    handler = build(issuer).callback();
    res.end(JSON.stringify({ kid: keys[0].kid }));
    return;
  }
  if (req.method === 'POST' && req.url === '/_test/retire') {
    keys = keys.slice(0, 1);
    handler = build(issuer).callback();
    res.end(JSON.stringify({ kid: keys[0].kid }));
    return;
  }
  handler(req, res);
});

let issuer;
server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  const { port } = server.address();
  issuer = `http://127.0.0.1:${port}`;
  keys = [newKey()];
  handler = build(issuer).callback();
  console.log(`listening ${port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
