"""The example boefjes: ``hello-world`` (kat_hello_world) and ``dns-hosts`` (kat_dns_hosts)."""
