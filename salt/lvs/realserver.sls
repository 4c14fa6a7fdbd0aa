{#- LVS real server: hold this minion's VIPs (from the lvs pillar) on lo, ARP suppression
    first. When the minion is no longer a real server of any service, the managed VIPs are
    removed (VIP first) and the suppression is relaxed. Options: lvs:realserver in the pillar. #}
{%- if 'realserver' in salt['lvs_pillar.roles']() %}
lvs-realserver:
  lvs_realserver.present: []
{%- else %}
lvs-realserver:
  lvs_realserver.absent: []
{%- endif %}
