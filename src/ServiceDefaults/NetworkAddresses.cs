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
    /// never public).
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

        return !(IPAddress.IsLoopback(address)
            // NAT64's local-use prefix (64:ff9b:1::/48, RFC 8215) places the IPv4 address where the
            // network's own prefix length says, which the worker cannot know; Teredo (2001::/32) hides it.
            || (v6[0] == 0x00 && v6[1] == 0x64 && v6[2] == 0xff && v6[3] == 0x9b && v6[4] == 0x00 && v6[5] == 0x01)
            || (v6[0] == 0x20 && v6[1] == 0x01 && v6[2] == 0x00 && v6[3] == 0x00)
            || (v6[0] == 0x01 && v6.AsSpan(1, 7).IndexOfAnyExcept((byte)0) < 0) // 100::/64, discard-only
            || address.Equals(IPAddress.IPv6None)
            || v6.AsSpan(0, 12).IndexOfAnyExcept((byte)0) < 0 // :: and the deprecated IPv4-compatible ::a.b.c.d
            || address.IsIPv6LinkLocal
            || address.IsIPv6SiteLocal
            || address.IsIPv6Multicast
            || (v6[0] & 0xfe) == 0xfc // fc00::/7, unique local
            || (v6[0] == 0x20 && v6[1] == 0x01 && v6[2] == 0x0d && v6[3] == 0xb8) // 2001:db8::/32, documentation
            || (v6[0] == 0x3f && v6[1] == 0xff && (v6[2] & 0xf0) == 0) // 3fff::/20, documentation (RFC 9637)
            || (v6[0] == 0x20 && v6[1] == 0x01 && v6[2] == 0x00 && v6[3] == 0x02 && v6[4] == 0x00 && v6[5] == 0x00) // 2001:2::/48, benchmarking
            || (v6[0] == 0x5f && v6[1] == 0x00)); // 5f00::/16, SRv6 segment identifiers (RFC 9602)
    }

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
