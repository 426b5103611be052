// A real OpenID provider (npm oidc-provider) for vitalbridge's federation tests: an
// organization's own identity server, as a clinic or distributor would run it.
//
// It issues JWT access tokens (RFC 9068, through resource indicators, RFC 8707) with the
// client_credentials grant, carrying the role and organization claims vitalbridge is configured
// to read. Configuration comes from the environment:
//   OIDC_CLIENTS   JSON [{"client_id","client_secret","scope","claims":{…}}]
//   OIDC_RESOURCES JSON {"<resource URL>": "<scopes it grants>"}
//   OIDC_TTL       access token lifetime in seconds (default 300)
//   OIDC_ACCOUNTS  JSON {"<account id>": {<claims of scope `vb`>}}: the people who can sign in
//   OIDC_LOGIN_CLIENTS JSON [{"client_id","client_secret"}]: relying parties (vitalbridge's login
//                  page) using the authorization code flow, with a redirect URI on loopback at any
//                  port (RFC 8252 section 7.3), since the server under test picks its port
// People sign in at /interaction/<uid>: a form with one field, the account id (no password:
// what is tested is the relying party, not this provider's login); consent is granted at once.
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
const accounts = JSON.parse(process.env.OIDC_ACCOUNTS || '{}');
const loginClients = JSON.parse(process.env.OIDC_LOGIN_CLIENTS || '[]');
const accountClaims = [...new Set(Object.values(accounts).flatMap((c) => Object.keys(c)))];

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
    clients: [
      ...clients.map((c) => ({
        client_id: c.client_id,
        client_secret: c.client_secret,
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope: c.scope,
      })),
      ...loginClients.map((c) => ({
        client_id: c.client_id,
        client_secret: c.client_secret,
        application_type: 'native',
        grant_types: ['authorization_code'],
        redirect_uris: ['http://127.0.0.1/auth/federated/callback'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
      })),
    ],
    jwks: { keys },
    // Every scope a client may ask for must be one the provider knows.
    scopes: ['openid', 'vb', ...new Set(clients.flatMap((c) => (c.scope || '').split(' ')).filter(Boolean))],
    // Scope `vb` releases the accounts' claims, from the userinfo endpoint (OpenID Connect Core
    // section 5.4: with the code flow, scope claims are not in the ID token).
    claims: { openid: ['sub'], vb: accountClaims },
    findAccount: (ctx, id) => (id in accounts
      ? { accountId: id, claims: () => ({ sub: id, ...accounts[id] }) }
      : undefined),
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // The login clients' tokens are for this provider's userinfo endpoint, not an API.
        defaultResource: (ctx, client) => (loginClients.some((c) => c.client_id === client.clientId)
          ? undefined
          : Object.keys(resources)[0]),
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

// The sign-in page and its answer: the account id typed, then consent to what was asked.
async function interaction(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'GET') {
    res.setHeader('Content-Type', 'text/html');
    res.end(`<form method="post" action="/interaction/${details.uid}/login">`
      + '<input name="login"><button>Sign in</button></form>');
    return;
  }
  let body = '';
  for await (const chunk of req) body += chunk;
  const login = new URLSearchParams(body).get('login');
  if (!(login in accounts)) {
    await provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'unknown account',
    });
    return;
  }
  const grant = new provider.Grant({ accountId: login, clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope);
  const grantId = await grant.save();
  await provider.interactionFinished(
    req,
    res,
    { login: { accountId: login }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
}

let provider;
let handler = () => {};
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interaction(provider, req, res).catch((e) => {
      res.statusCode = 400;
      res.end(String(e));
    });
    return;
  }
  if (req.method === 'POST' && req.url === '/_test/rotate') {
    keys = [newKey(), ...keys];
    provider = build(issuer);
    handler = provider.callback();
    res.end(JSON.stringify({ kid: keys[0].kid }));
    return;
  }
  if (req.method === 'POST' && req.url === '/_test/retire') {
    keys = keys.slice(0, 1);
    provider = build(issuer);
    handler = provider.callback();
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
  provider = build(issuer);
  handler = provider.callback();
  console.log(`listening ${port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
