# The same service as `twistd -n bolt`, for `twistd -ny bolt.tac`.
# Options come from the environment: BOLT_HOST, BOLT_PORT, BOLT_CONFIG, BOLT_DATA_DIR.
import os

from twisted.application import service

from bolt.service import Options, makeService

options = Options()
args = []
for flag, variable in (("--host", "BOLT_HOST"), ("--port", "BOLT_PORT"),
                       ("--config", "BOLT_CONFIG"), ("--data-dir", "BOLT_DATA_DIR")):
    if os.environ.get(variable):
        args += [flag, os.environ[variable]]
options.parseOptions(args)

application = service.Application("bolt")
makeService(options).setServiceParent(application)
