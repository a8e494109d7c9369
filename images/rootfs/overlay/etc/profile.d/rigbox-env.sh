# Workspace environment variables set through the Rigbox API.
if [ -r /etc/rigbox/env.sh ]; then . /etc/rigbox/env.sh; fi
