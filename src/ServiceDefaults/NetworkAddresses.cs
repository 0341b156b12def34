using System.Net;
using System.Net.Sockets;

namespace Conveyor.ServiceDefaults;

/// <summary>
/// Which destinations count as internal. A webhook URL comes from whoever submits the job: the Api
/// refuses an internal one at submission when it can tell (an address literal, a localhost name) and
/// the worker refuses every one at connect time, on the addresses the host resolved to.
/// </summary>
public static class NetworkAddresses
{
    /// <summary>
    /// False for loopback, private, shared (carrier-grade NAT), link-local (cloud metadata), unique
    /// local, multicast, documentation, benchmarking, SRv6 segment identifier, deprecated 6to4 relay anycast,
    /// reserved, discard-only and unspecified addresses, in IPv4, IPv6 and IPv4 embedded in IPv6 alike (mapped,
    /// translated, NAT64 and 6to4; Teredo and NAT64's local-use prefix, whose IPv4 address cannot be read, are
    /// never public). In IPv6, anything outside global unicast (2000::/3) and what IANA's special-purpose
    /// registry calls not globally reachable inside it (the IETF's 2001::/23 but a few, the documentation prefixes).
    /// </summary>
    public static bool IsPublic(IPAddress address)
    {
        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }

        if (address.AddressFamily == AddressFamily.InterNetwork)
        {
            var b = address.GetAddressBytes();
            return !(b[0] is 0 or 10 or 127 or >= 224
                || (b[0] == 100 && b[1] >= 64 && b[1] <= 127)
                || (b[0] == 169 && b[1] == 254)
                || (b[0] == 172 && b[1] >= 16 && b[1] <= 31)
                || (b[0] == 192 && b[1] == 0 && b[2] is 0 or 2)
                || (b[0] == 192 && b[1] == 88 && b[2] == 99) // 192.88.99.0/24, the deprecated 6to4 relay anycast (RFC 7526)
                || (b[0] == 192 && b[1] == 168)
                || (b[0] == 198 && b[1] is 18 or 19)
                || (b[0] == 198 && b[1] == 51 && b[2] == 100)
                || (b[0] == 203 && b[1] == 0 && b[2] == 113));
        }

        if (address.AddressFamily != AddressFamily.InterNetworkV6)
        {
            return false;
        }

        var v6 = address.GetAddressBytes();
        // Forms that carry an IPv4 address a gateway or relay may deliver to: each judged by that address.
        // NAT64's well-known prefix (64:ff9b::/96) and the IPv4-translated ::ffff:0:a.b.c.d, in their last
        // four bytes; 6to4 (2002::/16), in the four after the prefix.
        if ((v6[0] == 0x00 && v6[1] == 0x64 && v6[2] == 0xff && v6[3] == 0x9b && v6.AsSpan(4, 8).IndexOfAnyExcept((byte)0) < 0)
            || (v6.AsSpan(0, 8).IndexOfAnyExcept((byte)0) < 0 && v6[8] == 0xff && v6[9] == 0xff && v6[10] == 0 && v6[11] == 0))
        {
            return IsPublic(new IPAddress(v6.AsSpan(12, 4)));
        }

        if (v6[0] == 0x20 && v6[1] == 0x02)
        {
            return IsPublic(new IPAddress(v6.AsSpan(2, 4)));
        }

        // Only 2000::/3 is allocated for global unicast (IANA's IPv6 address space registry): outside it every
        // address is loopback, unspecified, discard-only or the dummy prefix (100::/64, 100:0:0:1::/64), SRv6
        // segment identifiers (5f00::/16), unique or link local, multicast or reserved by the IETF.
        if ((v6[0] & 0xe0) != 0x20)
        {
            return false;
        }

        return !(IsIetfProtocolAssignment(v6)
            || (v6[0] == 0x20 && v6[1] == 0x01 && v6[2] == 0x0d && v6[3] == 0xb8) // 2001:db8::/32, documentation
            || (v6[0] == 0x3f && v6[1] == 0xff && (v6[2] & 0xf0) == 0)); // 3fff::/20, documentation (RFC 9637)
    }

    /// <summary>
    /// Whether the address is in the IETF's 2001::/23 and not one of the few there that IANA's special-purpose
    /// registry calls globally reachable. Not reachable: Teredo (2001::/32, which hides its IPv4 address),
    /// benchmarking (2001:2::/48), the deprecated ORCHID (2001:10::/28) and what is not assigned yet.
    /// Reachable: the PCP, TURN and DNS-SD anycast addresses (2001:1::1 to 2001:1::3), AMT (2001:3::/32),
    /// AS112 (2001:4:112::/48), ORCHIDv2 (2001:20::/28) and drone entity tags (2001:30::/28).
    /// </summary>
    private static bool IsIetfProtocolAssignment(byte[] v6)
    {
        if (!(v6[0] == 0x20 && v6[1] == 0x01 && (v6[2] & 0xfe) == 0))
        {
            return false;
        }

        var anycast = v6[2] == 0 && v6[3] == 0x01 && v6.AsSpan(4, 11).IndexOfAnyExcept((byte)0) < 0 && v6[15] is >= 1 and <= 3;
        var globallyReachable = anycast
            || (v6[2] == 0 && v6[3] == 0x03)
            || (v6[2] == 0 && v6[3] == 0x04 && v6[4] == 0x01 && v6[5] == 0x12)
            || (v6[2] == 0 && (v6[3] & 0xf0) is 0x20 or 0x30);
        return !globallyReachable;
    }

    /// <summary>
    /// The address <paramref name="host"/> (a URL's host as a connection is made to it: its
    /// <see cref="Uri.IdnHost"/>) is a literal of, a final dot dropped; null for a name. <see cref="Uri"/> calls
    /// <c>10.0.0.5.</c> a name, which no resolver has, but a final dot, which makes <c>localhost.</c> the same
    /// host as <c>localhost</c>, leaves it that address.
    /// </summary>
    public static IPAddress? LiteralOf(string host) =>
        IPAddress.TryParse(host.TrimEnd('.'), out var address) ? address : null;

    /// <summary>
    /// <c>localhost</c> and names under <c>.localhost</c> (RFC 6761): they resolve to loopback, on
    /// the worker's own machine, whatever DNS says.
    /// </summary>
    public static bool IsLocalHostName(string host)
    {
        var name = host.TrimEnd('.');
        return name.Equals("localhost", StringComparison.OrdinalIgnoreCase)
            || name.EndsWith(".localhost", StringComparison.OrdinalIgnoreCase);
    }
}
