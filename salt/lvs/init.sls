{#- saltext-lvs formula entry point: applies the LVS roles this minion has in the `lvs` pillar.
    A minion is a real server when its id is listed under lvs:services:<name>:realservers, and
    it stays in the real server state while it still manages VIPs (so that taking a host out
    of every service removes its VIPs on the next run). Directors likewise. #}
{%- if 'lvs_pillar.roles' not in salt %}
lvs-extension-missing:
  test.fail_without_changes:
    - name: "saltext-lvs modules are not on this minion: run saltutil.sync_all (file root) or pip install saltext-lvs"
{%- else %}
{%- set roles = salt['lvs_pillar.roles']() %}
{%- set includes = [] %}
{#- lvs_realserver loads on Linux only: elsewhere the formula must still render #}
{%- set managed = salt['lvs_realserver.managed']().get('vips') if 'lvs_realserver.managed' in salt else {} %}
{%- if 'realserver' in roles or managed %}
{%-   do includes.append('lvs.realserver') %}
{%- endif %}
{%- set directing = salt['lvs_director.managed']().get('services') if 'lvs_director.managed' in salt else {} %}
{%- if 'director' in roles or directing %}
{%-   do includes.append('lvs.director') %}
{%- endif %}
{%- do includes.append('lvs.beacon') %}  {#- drift beacon: present on real servers, absent elsewhere #}
include: {{ includes | json }}

lvs-roles:
  test.nop:
    - name: "lvs roles of {{ grains['id'] }}: {{ roles | join(', ') or 'none' }}"
{%- endif %}
