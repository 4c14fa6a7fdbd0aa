{#- Add real servers to their services safely (docs/remediation.md, "Ordered roll-out").

    First put them in the pillar (lvs:services:<name>:realservers:<id> with their weight), then:

      salt-run state.orchestrate orch.lvs.add_realserver pillar='{"realservers": ["rs3"]}'

    1. the real-server state on them (VIP on lo, ARP suppression first; and the drift beacon),
       `batch` at a time;
    2. every one of them audits clean: no NIC answers ARP for a VIP or uses it as sender, every
       VIP held (lvs_rollout.check_realservers);
    3. the directors apply their pillar, `director_batch` at a time: only now do the new real
       servers get traffic, with their pillar weight;
    4. the directors' tables are what the pillar says, the new real servers in them.
    Any failure stops the roll-out there (failhard): a real server that is not ready never gets
    traffic.

    Pillar (of the orchestration):
      realservers      minion ids (list, or comma-separated)            required
      directors        minion ids; default: lvs:directors of the first real server's pillar
      batch            real servers at a time (1, "25%"); default 1
      director_batch   directors at a time; default 1 #}
{%- set realservers = salt['pillar.get']('realservers', []) %}
{%- if realservers is string %}{% set realservers = realservers.split(',') | map('trim') | select | list %}{% endif %}
{%- if not realservers %}
lvs-add-realserver-input:
  test.fail_without_changes:
    - comment: "orch.lvs.add_realserver needs pillar realservers: [minion ids] (already in lvs:services:<name>:realservers)"
    - failhard: True
{%- else %}
{%- set directors = salt['pillar.get']('directors', []) or salt['saltutil.runner']('lvs_rollout.directors', minion=realservers[0]) %}
{%- if directors is string %}{% set directors = directors.split(',') | map('trim') | select | list %}{% endif %}
{%- if directors is mapping or not directors %}
lvs-add-directors:
  test.fail_without_changes:
    - comment: {{ ("no directors: " ~ (directors.get('Error') if directors is mapping else "give pillar directors: [minion ids]")) | json }}
    - failhard: True
{%- else %}
lvs-add-realserver-state:
  salt.state:
    - tgt: {{ realservers | json }}
    - tgt_type: list
    - sls: [lvs.realserver, lvs.beacon]
    - batch: {{ salt['pillar.get']('batch', 1) | string | json }}
    - failhard: True

lvs-add-realserver-audit:
  salt.runner:
    - name: lvs_rollout.check_realservers
    - minions: {{ realservers | json }}
    - require:
      - salt: lvs-add-realserver-state
    - failhard: True

lvs-add-director-state:
  salt.state:
    - tgt: {{ directors | json }}
    - tgt_type: list
    - sls: lvs.director
    - batch: {{ salt['pillar.get']('director_batch', 1) | string | json }}
    - require:
      - salt: lvs-add-realserver-audit
    - failhard: True

lvs-add-director-check:
  salt.runner:
    - name: lvs_rollout.check_directors
    - directors: {{ directors | json }}
    - realservers: {{ realservers | json }}
    - present: True
    - require:
      - salt: lvs-add-director-state
    - failhard: True
{%- endif %}
{%- endif %}
