"""``bolt``: the command-line client for a Bolt server's HTTPS API and its TCP shells.

A face like the API and the shell: it talks HTTPS and TCP only (never bolt.manager or bolt.host)
and uses nothing but the standard library, synchronously.

    main.py     the argparse tree and one function per command
    client.py   HTTPS with the server's certificate pinned (the pin is made by ``bolt remote add``)
    config.py   the remotes, in ~/.config/bolt/config.json (mode 0600)
    shell.py    the interactive telnet client on the local terminal
    output.py   tables for people, JSON for scripts
    sizes.py    "512M", "1.5GiB", CPU as cores, percent or µs
    completion.py  a bash completion script generated from the argparse tree
"""
