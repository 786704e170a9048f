# Sourced by the guests' /init (tests/qemu/init.sh, tests/qemu/ssh_init.sh): the proof's
# topology around this node1 (10.0.0.11 on c0): a client namespace (10.0.0.100) and a
# second backend namespace be2 (10.244.2.7:8080); web-1 answers on 10.0.0.11:80. Every
# backend answers with its name and the client address it sees.
for b in web-1 web-2; do
    mkdir -p /www/$b/cgi-bin
    printf '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n%s %%s\\n" "$REMOTE_ADDR"\n' $b > /www/$b/cgi-bin/who
    chmod +x /www/$b/cgi-bin/who
done
/usr/sbin/ip netns add client
/usr/sbin/ip netns add be2
/usr/sbin/ip link add c0 type veth peer name eth0 netns client
/usr/sbin/ip addr add 10.0.0.11/24 dev c0
/usr/sbin/ip link set c0 up
/usr/sbin/ip netns exec client sh -c '/usr/sbin/ip link set lo up; /usr/sbin/ip addr add 10.0.0.100/24 dev eth0; /usr/sbin/ip link set eth0 up; /usr/sbin/ip route add default via 10.0.0.11'
/usr/sbin/ip link add b0 type veth peer name eth0 netns be2
/usr/sbin/ip addr add 10.244.2.1/24 dev b0
/usr/sbin/ip link set b0 up
/usr/sbin/ip netns exec be2 sh -c '/usr/sbin/ip link set lo up; /usr/sbin/ip addr add 10.244.2.7/24 dev eth0; /usr/sbin/ip link set eth0 up; /usr/sbin/ip route add default via 10.244.2.1'
httpd -p 10.0.0.11:80 -h /www/web-1
/usr/sbin/ip netns exec be2 httpd -p 10.244.2.7:8080 -h /www/web-2
sleep 1

# /tmp/get ADDRESS PORT: an HTTP GET with nc (the static busybox's wget needs NSS for its
# port lookup). Prints the body's last line ("web-1 <client address seen>"), or nc's error.
cat > /tmp/get <<'GET'
#!/bin/sh
printf 'GET /cgi-bin/who HTTP/1.0\r\n\r\n' | nc -w 2 "$1" "$2" 2>&1 | tail -n 1
GET
chmod +x /tmp/get
