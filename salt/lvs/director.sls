{#- LVS director: the IPVS table, the VIPs on lvs:directors:<id>:interface and their gratuitous
    ARP, from the lvs pillar. A minion that is no longer a director removes what it manages. #}
{%- if 'director' in salt['lvs_pillar.roles']() %}
lvs-director:
  lvs_director.present: []
{%- else %}
lvs-director:
  lvs_director.absent: []
{%- endif %}
