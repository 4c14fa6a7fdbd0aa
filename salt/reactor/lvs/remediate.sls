{#- saltext-lvs: put a drifted LVS real server right (docs/remediation.md).

    Matched in the master config on exactly 'salt/beacon/*/lvs_realserver/drift'. The glob's *
    also matches '/', so the tag is checked again here, and the runner checks everything once
    more (tag, id, the minion's signature with its accepted key, freshness, rate limit, its
    pillar role) before it applies the fixed state lvs.realserver on that one minion. The event
    goes to the runner as data only; nothing from it is ever passed into the state. #}
{%- set parts = tag.split('/') %}
{%- if parts | length == 5 and parts[0] == 'salt' and parts[1] == 'beacon'
      and parts[3] == 'lvs_realserver' and parts[4] == 'drift'
      and data.get('id') == parts[2] %}
lvs-remediate-drift:
  runner.lvs_remediate.drift:
    - args:
      - tag: {{ tag | json }}
      - data: {{ data | json }}
{%- endif %}
