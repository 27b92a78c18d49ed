"""drp's DHCPv4 server: a sans-IO core (packets, optvalues, template, book, engine) under drp.dhcp.server."""
