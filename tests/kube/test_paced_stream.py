"""A paced stream's connection keeps a small receive buffer (see ``KubeClient.stream``)."""

from __future__ import annotations

import socket

from choreo_dp.kube.client import PACED_RECEIVE_BUFFER, _paced_socket


def test_a_paced_socket_has_its_receive_buffer_fixed_before_it_connects() -> None:
    default = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    paced = _paced_socket((socket.AF_INET, socket.SOCK_STREAM, 0, "", ("127.0.0.1", 0)))
    try:
        # Linux reports twice what was set (bookkeeping overhead); autotuning is off once it is set
        assert paced.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) <= 2 * PACED_RECEIVE_BUFFER
        assert paced.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < default.getsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF
        )
    finally:
        paced.close()
        default.close()
