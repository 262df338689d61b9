/// The dashboard's templates, script and style sheet, compiled into the binary (no build step, no CDN).
///
/// Templates use only double-brace tags, which swift-mustache HTML-escapes (`< > & " '`); none uses the triple-brace
/// or ampersand forms (a test checks), so no attacker-controlled text (device ids, message bodies, event details,
/// destinations) is ever written unescaped. Pages share the `layout` parent. The script is served from `/ui/assets/app.js` under a
/// Content-Security-Policy without `'unsafe-inline'`: no page has an inline script, style or event handler.
enum DashboardAssets {
    static let templates: [String: String] = [
        "layout": """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>{{title}} · Bulwark</title>
        <link rel="stylesheet" href="/ui/assets/app.css">
        <script src="/ui/assets/app.js" defer></script>
        </head>
        <body>
        <nav>
        <a href="/ui">Fleet</a>
        <a href="/ui/events">Live events</a>
        <a href="/ui/audit">Audit log</a>
        <a href="/ui/claims">Pairing claims</a>
        <a href="/ui/rollouts">Rollouts</a>
        <span class="who">{{operator}}</span>
        </nav>
        <main>
        {{$content}}{{/content}}
        </main>
        <p id="status" role="status"></p>
        <dialog id="confirm">
        <p id="confirm-text"></p>
        <button type="button" id="confirm-yes">Confirm</button>
        <button type="button" id="confirm-no">Cancel</button>
        </dialog>
        </body>
        </html>
        """,
        "overview": """
        {{<layout}}{{$content}}
        <h1>Fleet</h1>
        <form method="get" action="/ui" class="filters">
        <label>Device id contains <input name="q" value="{{search}}"></label>
        <label>Status <select name="status">
        <option value="">any</option>
        <option value="active"{{#statusActive}} selected{{/statusActive}}>active</option>
        <option value="revoked"{{#statusRevoked}} selected{{/statusRevoked}}>revoked</option>
        </select></label>
        <label>Sort <select name="sort">
        {{#sorts}}<option value="{{value}}"{{#selected}} selected{{/selected}}>{{label}}</option>{{/sorts}}
        </select></label>
        <label><input type="checkbox" name="desc" value="1"{{#descending}} checked{{/descending}}> descending</label>
        <button type="submit">Show</button>
        </form>
        <p class="count"><span id="total">{{total}}</span> devices · page {{page}} of {{pages}}</p>
        <table id="devices">
        <thead><tr><th>Device</th><th>Status</th><th>Last seen</th><th>Class</th><th>Installed</th><th>Quarantine</th><th>Certificate expires</th></tr></thead>
        <tbody>
        {{#devices}}<tr data-device="{{id}}"><td><a href="/ui/devices/{{id}}">{{id}}</a></td><td>{{status}}</td><td>{{lastSeen}}</td><td>{{deviceClass}}</td><td>{{installed}}</td><td>{{quarantine}}</td><td class="{{expiryClass}}">{{expiry}}</td></tr>
        {{/devices}}
        </tbody>
        </table>
        <p class="pages">{{#previous}}<a id="previous" href="{{.}}">← previous</a>{{/previous}} {{#next}}<a id="next" href="{{.}}">next →</a>{{/next}}</p>
        {{/content}}{{/layout}}
        """,
        "device": """
        {{<layout}}{{$content}}
        <h1>Device <span id="device-id">{{id}}</span></h1>
        <p>Status <strong id="device-status">{{status}}</strong>{{#quarantine}} · quarantined until {{.}}{{/quarantine}}{{#deviceClass}} · class {{.}}{{/deviceClass}}</p>
        <p class="actions">
        {{#active}}<button type="button" data-action="revoke" data-device="{{id}}">Revoke…</button>{{/active}}
        <button type="button" data-action="release" data-device="{{id}}">Release from quarantine…</button>
        </p>
        <h2>Certificates</h2>
        <table id="certificates"><thead><tr><th>Serial</th><th>Valid from</th><th>Valid until</th><th>Revoked</th></tr></thead><tbody>
        {{#certificates}}<tr><td>{{serial}}</td><td>{{notBefore}}</td><td>{{notAfter}}</td><td>{{revoked}}</td></tr>
        {{/certificates}}</tbody></table>
        <h2>Refusals by pipeline stage (its newest 200 audit records)</h2>
            <table id="stages"><thead><tr><th>Stage</th><th>Refusals</th></tr></thead><tbody>
            {{#stages}}<tr><td>{{stage}}</td><td>{{count}}</td></tr>
            {{/stages}}</tbody></table>
            <h2>Audit records by kind (its newest 200)</h2>
        <table id="kinds"><thead><tr><th>Kind</th><th>Records</th></tr></thead><tbody>
        {{#kinds}}<tr><td>{{kind}}</td><td>{{count}}</td></tr>
        {{/kinds}}</tbody></table>
        <h2>Recent messages</h2>
        <table id="messages"><thead><tr><th>Received</th><th>Correlation id</th><th>Body</th></tr></thead><tbody>
        {{#messages}}<tr><td>{{at}}</td><td>{{correlationID}}</td><td><code>{{body}}</code></td></tr>
        {{/messages}}</tbody></table>
        <h2>Destinations it talks to</h2>
        <table id="destinations"><thead><tr><th>Direction</th><th>Protocol</th><th>Address</th><th>Port</th><th>Last seen</th></tr></thead><tbody>
        {{#destinations}}<tr><td>{{direction}}</td><td>{{proto}}</td><td>{{address}}</td><td>{{port}}</td><td>{{lastSeen}}</td></tr>
        {{/destinations}}</tbody></table>
        <h2>Audit records</h2>
        <table id="audit"><thead><tr><th>#</th><th>At</th><th>Kind</th><th>Detail</th></tr></thead><tbody>
        {{#events}}<tr><td>{{id}}</td><td>{{at}}</td><td>{{kind}}</td><td>{{detail}}</td></tr>
        {{/events}}</tbody></table>
        {{/content}}{{/layout}}
        """,
        "events": """
        {{<layout}}{{$content}}
        <h1>Live security events</h1>
        <p>New records appear as the hub writes them (at most 50 a second; more are counted, not listed).</p>
        <p id="dropped" class="dropped"></p>
        <table><thead><tr><th>#</th><th>At</th><th>Kind</th><th>Identity</th><th>Detail</th></tr></thead>
        <tbody id="events" data-stream="/ui/events/stream?after={{head}}">
        {{#events}}<tr><td>{{id}}</td><td>{{at}}</td><td>{{kind}}</td><td>{{identity}}</td><td>{{detail}}</td></tr>
        {{/events}}</tbody></table>
        {{/content}}{{/layout}}
        """,
        "audit": """
        {{<layout}}{{$content}}
        <h1>Audit log</h1>
        <p id="audit-status" class="{{statusClass}}">{{status}}</p>
        <p>Head <code id="audit-head">{{head}}</code> · {{count}} records · {{keyed}} keyed{{#unkeyed}} · {{.}} written before the key existed{{/unkeyed}}</p>
        {{/content}}{{/layout}}
        """,
        "claims": """
        {{<layout}}{{$content}}
        <h1>Pairing claims</h1>
        <form id="claim-form" class="claim">
        <label>Label (typed or pasted) <textarea id="claim-label" rows="3" cols="60"></textarea></label>
        <button type="button" data-action="claim">Claim…</button>
        </form>
        <table id="claims"><thead><tr><th>Device</th><th>Suite</th><th>Expires</th></tr></thead><tbody>
        {{#claims}}<tr><td>{{device}}</td><td>{{suite}}</td><td>{{expires}}</td></tr>
        {{/claims}}</tbody></table>
        {{/content}}{{/layout}}
        """,
        "rollouts": """
        {{<layout}}{{$content}}
        <h1>Rollouts</h1>
        {{^fields}}<p>No rollout was started{{^updates}} (no update repository is configured){{/updates}}.</p>{{/fields}}
        <table id="rollout"><tbody>
        {{#fields}}<tr><th>{{name}}</th><td>{{value}}</td></tr>
        {{/fields}}</tbody></table>
        {{/content}}{{/layout}}
        """,
    ]

    static let script = """
        'use strict';
        // Bulwark dashboard: confirmation steps for actions, same-origin JSON POSTs, and the live event stream.
        // Everything the hub sends is put into the page with textContent, never as HTML.
        (function () {
          const status = document.getElementById('status');
          function say(text) { if (status) { status.textContent = text; } }
          // An action that reloads the page keeps its outcome on screen across the reload (this tab only).
          function sayThenReload(text) {
            try { sessionStorage.setItem('bulwark-status', text); } catch (e) { }
            say(text);
            setTimeout(function () { location.reload(); }, 300);
          }
          try {
            const kept = sessionStorage.getItem('bulwark-status');
            if (kept) { sessionStorage.removeItem('bulwark-status'); say(kept); }
          } catch (e) { }

          async function post(url, body) {
            const response = await fetch(url, {
              method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/json' },
              body: JSON.stringify(body || {})
            });
            let answer = {};
            try { answer = await response.json(); } catch (e) { answer = {}; }
            return { ok: response.ok, status: response.status, answer: answer };
          }

          function confirmThen(text, action) {
            const dialog = document.getElementById('confirm');
            document.getElementById('confirm-text').textContent = text;
            const yes = document.getElementById('confirm-yes');
            const no = document.getElementById('confirm-no');
            yes.onclick = async function () { dialog.close(); await action(); };
            no.onclick = function () { dialog.close(); say('Cancelled.'); };
            dialog.showModal();
          }

          async function act(button) {
            const action = button.dataset.action;
            const device = button.dataset.device;
            if (action === 'revoke') {
              confirmThen('Revoke device ' + device + '? Its certificates stop working at once.', async function () {
                const result = await post('/ui/actions/devices/' + encodeURIComponent(device) + '/revoke');
                if (result.ok) { sayThenReload('Revoked ' + device + '.'); } else {
                  say('Refused (' + result.status + '): ' + (result.answer.message || ''));
                }
              });
            } else if (action === 'release') {
              confirmThen('Release device ' + device + ' from quarantine?', async function () {
                const result = await post('/ui/actions/devices/' + encodeURIComponent(device) + '/release');
                say(result.ok ? 'Released ' + device + '.' : 'Refused (' + result.status + '): ' + (result.answer.message || ''));
              });
            } else if (action === 'claim') {
              const label = document.getElementById('claim-label').value.trim();
              confirmThen('Claim this label? The hub will pair with that device once.', async function () {
                const result = await post('/ui/actions/claims', { label: label });
                if (result.ok) { sayThenReload('Claimed ' + result.answer.deviceId + '.'); } else {
                  say('Refused (' + result.status + '): ' + (result.answer.message || ''));
                }
              });
            }
          }

          document.addEventListener('click', function (event) {
            const button = event.target.closest('button[data-action]');
            if (button) { event.preventDefault(); act(button); }
          });

          const events = document.getElementById('events');
          if (events && events.dataset.stream) {
            const dropped = document.getElementById('dropped');
            let missed = 0;
            const source = new EventSource(events.dataset.stream);
            source.addEventListener('record', function (message) {
              const record = JSON.parse(message.data);
              const row = document.createElement('tr');
              for (const value of [record.id, record.at, record.kind, record.identity || '', record.detail]) {
                const cell = document.createElement('td');
                cell.textContent = String(value);
                row.appendChild(cell);
              }
              events.insertBefore(row, events.firstChild);
              while (events.rows.length > 200) { events.deleteRow(events.rows.length - 1); }
            });
            source.addEventListener('dropped', function (message) {
              missed += Number(JSON.parse(message.data).count) || 0;
              dropped.textContent = missed + ' more records were written than shown (see the audit log).';
            });
          }
        })();
        """

    static let styleSheet = """
        body { font-family: system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
        nav { display: flex; gap: 1.2em; padding: 0.7em 1.2em; background: #1d2330; }
        nav a { color: #fff; text-decoration: none; }
        nav .who { margin-left: auto; color: #b8c0d0; }
        main { padding: 1em 1.5em; }
        table { border-collapse: collapse; width: 100%; background: #fff; margin-bottom: 1.5em; }
        th, td { text-align: left; padding: 0.35em 0.6em; border-bottom: 1px solid #e1e4ea; font-size: 0.92em; }
        td code { white-space: pre-wrap; word-break: break-all; }
        .filters label { margin-right: 1em; }
        .expiring { color: #b3261e; font-weight: 600; }
        .bad { color: #b3261e; font-weight: 600; }
        .good { color: #1b7a3a; font-weight: 600; }
        .dropped { color: #8a5a00; }
        #status { padding: 0 1.5em; }
        dialog::backdrop { background: rgba(0, 0, 0, 0.3); }
        """
}
