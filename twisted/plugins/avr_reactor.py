"""``twistd --reactor=avr-epoll``: avr's epoll reactor (`avr.reactor`), for any twistd application."""

from twisted.application.reactors import Reactor

avr_epoll = Reactor("avr-epoll", "avr.reactor", "epoll, without a legacy log context around each ready socket")
