{#- Take real servers out of their services safely (docs/remediation.md, "Ordered roll-out").

    First remove them from the pillar (lvs:services:<name>:realservers), then:

      salt-run state.orchestrate orch.lvs.remove_realserver pillar='{"realservers": ["rs3"]}'

    1. drain: on every director, weight 0 for their entries the pillar dropped, then wait up to
       `drain_timeout` s for active connections to end (lvs_rollout.drain). Refused while the
       pillar still lists them; stops when connections remain (unless `force`);
    2. the directors apply their pillar, `director_batch` at a time: the drained entries go;
    3. no director sends to them any more (lvs_rollout.check_directors);
    4. the real-server state on them, `batch` at a time: the VIPs go first, then the ARP
       suppression is relaxed (or they keep the VIPs of services they still serve), and the
       drift beacon goes when they are no real server any more.
    Any failure stops the roll-out there (failhard): a real server never drops its VIP while a
    director still sends it traffic.

    Pillar (of the orchestration):
      realservers      minion ids (list, or comma-separated)            required
      directors        minion ids; default: lvs:directors of the first real server's pillar
      drain_timeout    seconds to wait for active connections; default 300
      force            true: go on when connections remain after drain_timeout; default false
      addresses        their addresses, when the minions cannot tell (a dead host)
      batch            real servers at a time; default 1
      director_batch   directors at a time; default 1 #}
{%- set realservers = salt['pillar.get']('realservers', []) %}
{%- if realservers is string %}{% set realservers = realservers.split(',') | map('trim') | select | list %}{% endif %}
{%- if not realservers %}
lvs-remove-realserver-input:
  test.fail_without_changes:
    - comment: "orch.lvs.remove_realserver needs pillar realservers: [minion ids] (already removed from lvs:services:<name>:realservers)"
    - failhard: True
{%- else %}
{%- set directors = salt['pillar.get']('directors', []) or salt['saltutil.runner']('lvs_rollout.directors', minion=realservers[0]) %}
{%- if directors is string %}{% set directors = directors.split(',') | map('trim') | select | list %}{% endif %}
{%- if directors is mapping or not directors %}
lvs-remove-directors:
  test.fail_without_changes:
    - comment: {{ ("no directors: " ~ (directors.get('Error') if directors is mapping else "give pillar directors: [minion ids]")) | json }}
    - failhard: True
{%- else %}
lvs-remove-drain:
  salt.runner:
    - name: lvs_rollout.drain
    - realservers: {{ realservers | json }}
    - directors: {{ directors | json }}
    - timeout: {{ salt['pillar.get']('drain_timeout', 300) | json }}
    - force: {{ salt['pillar.get']('force', False) | json }}
    - addresses: {{ salt['pillar.get']('addresses', []) | json }}
    - failhard: True

lvs-remove-director-state:
  salt.state:
    - tgt: {{ directors | json }}
    - tgt_type: list
    - sls: lvs.director
    - batch: {{ salt['pillar.get']('director_batch', 1) | string | json }}
    - require:
      - salt: lvs-remove-drain
    - failhard: True

lvs-remove-director-check:
  salt.runner:
    - name: lvs_rollout.check_directors
    - directors: {{ directors | json }}
    - realservers: {{ realservers | json }}
    - present: False
    - require:
      - salt: lvs-remove-director-state
    - failhard: True

lvs-remove-realserver-state:
  salt.state:
    - tgt: {{ realservers | json }}
    - tgt_type: list
    - sls: [lvs.realserver, lvs.beacon]
    - batch: {{ salt['pillar.get']('batch', 1) | string | json }}
    - require:
      - salt: lvs-remove-director-check
    - failhard: True
{%- endif %}
{%- endif %}
