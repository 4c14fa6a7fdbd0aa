{#- LVS real server drift beacon (docs/remediation.md): installs the lvs_realserver beacon on
    real servers, from the pillar key lvs_beacon, and removes it from minions that are no longer
    real servers (or when lvs_beacon:enabled is false). Saved to the minion's beacons.conf, so it
    survives a restart.

      lvs_beacon:
        enabled: true     # default true
        interval: 1       # seconds between checks (default 1)
        remind: 120       # resend a drift that persists after this many seconds (0: never)
        refresh: 60       # re-read links and addresses at least this often, in seconds

    Beacons run inside the salt-minion daemon, and beacon.present talks to it over its event bus:
    from salt-call (masterless or not) there is no daemon to talk to, so nothing is changed and a
    notification says so. #}
{%- set conf = salt['pillar.get']('lvs_beacon', {}) or {} %}
{%- set daemon = 'salt_minion' in (opts.get('__cli') or '') | replace('-', '_') %}
{%- set roles = salt['lvs_pillar.roles']() if 'lvs_pillar.roles' in salt else [] %}
{%- set wanted = 'realserver' in roles and 'lvs_realserver.managed' in salt
                 and conf.get('enabled', True) %}
{%- if not daemon %}
lvs-realserver-beacon:
  test.show_notification:
    - text: "lvs_realserver beacon not managed from {{ opts.get('__cli') or 'this client' }}: beacons run in the salt-minion daemon; apply lvs through the master to install it"
{%- elif wanted %}
lvs-realserver-beacon:
  beacon.present:
    - name: lvs_realserver
    - save: True
    - interval: {{ conf.get('interval', 1) | json }}
    - disable_during_state_run: True
    - remind: {{ conf.get('remind', 120) | json }}
    - refresh: {{ conf.get('refresh', 60) | json }}
{%- elif 'lvs_realserver' in (salt['beacons.list'](return_yaml=False, include_pillar=False) or {}) %}
lvs-realserver-beacon:
  beacon.absent:
    - name: lvs_realserver
    - save: True
{%- endif %}
