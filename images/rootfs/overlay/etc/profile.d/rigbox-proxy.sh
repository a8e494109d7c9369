# Package managers that read the environment (npm, pip, uv) use the node's
# package proxy; local addresses stay direct.
export npm_config_proxy=http://169.254.0.1:3142 npm_config_https_proxy=http://169.254.0.1:3142
export no_proxy=localhost,127.0.0.1,::1,169.254.0.2
