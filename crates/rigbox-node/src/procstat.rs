//! CPU time and resident memory of a process, from /proc.

/// (user+system CPU ms, RSS bytes) of `pid`, zeros when it is gone.
pub fn cpu_and_rss(pid: u32) -> (u64, u64) {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as u64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s[s.rfind(')')? + 2..].to_string();
            let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
            // utime and stime are fields 14 and 15 overall: 11 and 12 after "pid (comm)".
            Some((f.get(11)? + f.get(12)?) * 1000 / tick)
        })
        .unwrap_or(0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map(|p| p * page)
        .unwrap_or(0);
    (cpu, rss)
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_process_has_memory() {
        let (_, rss) = super::cpu_and_rss(std::process::id());
        assert!(rss > 0);
    }
}
