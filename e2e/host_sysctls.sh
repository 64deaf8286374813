# Sourced by e2e/kind_e2e.sh and e2e/conformance.sh: the host's kernel settings a privileged kind
# node could change, saved before a run and put back after it (kubelet sets vm.overcommit_memory,
# vm.panic_on_oom, kernel.panic, kernel.panic_on_oops and kernel.keys.* when they differ from its
# defaults, and a privileged node writes the host's /proc/sys).
#
# Every key is watched but the per-network-namespace trees, which a node (in a netns of its own)
# cannot touch on the host — net.ipv4.ip_forward among them: a change there is another program's
# (a CNI bridge plugin on the host) and putting it "back" would undo it — and the counters the
# kernel moves by itself.

declare -gA saved_sysctls=()

host_sysctls() {
    sysctl -a 2>/dev/null | grep -v -E \
        -e '^net\.(ipv4|ipv6)\.(conf|neigh)\.' -e '^net\.ipv6\.route\.' \
        -e '^net\.ipv4\.ip_forward ' \
        -e '^kernel\.random\.' -e '^kernel\.(ns_last_pid|pty\.nr|tainted|core_modes) ' \
        -e '^fs\.(dentry-state|file-nr|inode-nr|inode-state|aio-nr|quota\.)' \
        -e '^net\.netfilter\.nf_conntrack_count ' -e '^vm\.stat_refresh' \
        -e '^kernel\.sched_domain\.' -e '^net\.ipv4\.tcp_(fastopen_key|mem) ' | sort
}

save_host_sysctls() {
    local key _ value
    saved_sysctls=()
    while read -r key _ value; do saved_sysctls[$key]=$value; done < <(host_sysctls)
}

# changed_host_sysctls: "KEY BEFORE -> AFTER" for each key whose value moved since
# save_host_sysctls.
changed_host_sysctls() {
    local key _ value
    while read -r key _ value; do
        [ "${saved_sysctls[$key]+set}" = set ] || continue
        [ "${saved_sysctls[$key]}" = "$value" ] || printf '%s %s -> %s\n' "$key" "${saved_sysctls[$key]}" "$value"
    done < <(host_sysctls)
}

# restore_host_sysctls: writes back each key that moved; prints one line per key for the log.
restore_host_sysctls() {
    local key _
    while read -r key _; do
        if sysctl -q -w "$key=${saved_sysctls[$key]}" >/dev/null; then
            echo "restored the host's $key=${saved_sysctls[$key]}"
        else
            echo "could not restore the host's $key=${saved_sysctls[$key]}"
        fi
    done < <(changed_host_sysctls)
}
