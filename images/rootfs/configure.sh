#!/bin/sh
# Runs inside the freshly debootstrapped tree (chroot) once per recipe.
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

echo rigbox > /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 rigbox\n::1 localhost ip6-localhost ip6-loopback\n' > /etc/hosts
printf '/dev/vda / ext4 rw,relatime,errors=remount-ro 0 1\n' > /etc/fstab
printf 'nameserver 169.254.0.1\n' > /etc/resolv.conf

# locale
sed -i 's/^# *en_US.UTF-8/en_US.UTF-8/' /etc/locale.gen && locale-gen >/dev/null
printf 'LANG=en_US.UTF-8\n' > /etc/default/locale

# the workspace user
useradd -m -s /bin/bash -G sudo developer
passwd -d developer >/dev/null
passwd -l root >/dev/null
chmod 0440 /etc/sudoers.d/developer
install -d -m 0700 -o developer -g developer /home/developer/.ssh
# user services (service specs) run under the developer's systemd without a login
mkdir -p /var/lib/systemd/linger && touch /var/lib/systemd/linger/developer

# networking: static, the same address in every slot
systemctl enable systemd-networkd.service >/dev/null 2>&1
systemctl enable rigbox-agent.service rigbox-ssh-hostkeys.service >/dev/null 2>&1

# keep boot short under software emulation: nothing here needs these
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
         fstrim.timer man-db.timer dpkg-db-backup.timer getty@tty1.service \
         systemd-networkd-wait-online.service systemd-resolved.service \
         systemd-timesyncd.service console-getty.service serial-getty@ttyS0.service; do
  systemctl mask "$u" >/dev/null 2>&1 || true
done
systemctl set-default multi-user.target >/dev/null

# SSH host keys are per workspace: generated on first boot (and on fork)
rm -f /etc/ssh/ssh_host_*

# machine-id is per workspace too
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /tmp/* /var/tmp/*
