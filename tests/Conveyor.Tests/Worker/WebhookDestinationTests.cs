using System.Net;
using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.ServiceDefaults;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>Webhook deliveries stay off internal networks unless Webhooks:AllowPrivateNetworks says otherwise.</summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class WebhookDestinationTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>
    /// The receiver's own machine: by number, by name and over IPv6 loopback; and by names under RFC 6761's
    /// localhost, which are loopback whatever DNS says, though a resolver may not answer for them at all.
    /// </summary>
    private static readonly string[] LoopbackHosts = ["127.0.0.1", "localhost", "[::1]", "localhost.", "hooks.localhost"];

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData("8.8.8.8", true)]
    [InlineData("93.184.215.14", true)]
    [InlineData("2606:4700:4700::1111", true)]
    [InlineData("::ffff:8.8.8.8", true)]
    [InlineData("64:ff9b::808:808", true)]
    [InlineData("127.0.0.1", false)]
    [InlineData("127.255.0.9", false)]
    [InlineData("0.0.0.0", false)]
    [InlineData("10.1.2.3", false)]
    [InlineData("172.16.0.1", false)]
    [InlineData("172.31.255.255", false)]
    [InlineData("192.168.1.1", false)]
    [InlineData("169.254.169.254", false)]
    [InlineData("100.64.0.1", false)]
    [InlineData("198.18.0.1", false)]
    [InlineData("224.0.0.1", false)]
    [InlineData("255.255.255.255", false)]
    [InlineData("::1", false)]
    [InlineData("::", false)]
    [InlineData("::ffff:127.0.0.1", false)]
    [InlineData("::ffff:169.254.169.254", false)]
    [InlineData("64:ff9b::a00:1", false)]
    [InlineData("fe80::1", false)]
    [InlineData("fd00:ec2::254", false)]
    [InlineData("ff02::1", false)]
    [InlineData("2001:db8::1", false)]
    [InlineData("2002:808:808::1", true)]
    [InlineData("2002:7f00:1::1", false)]
    [InlineData("2002:a9fe:a9fe::1", false)]
    [InlineData("::ffff:0:808:808", true)]
    [InlineData("::ffff:0:7f00:1", false)]
    [InlineData("::ffff:0:a9fe:a9fe", false)]
    [InlineData("64:ff9b:1::a9fe:a9fe", false)]
    [InlineData("64:ff9b:1:a9fe:a9:fe00::", false)]
    [InlineData("2001:0:4136:e378:8000:63bf:3fff:fdd2", false)]
    [InlineData("100::1", false)]
    [InlineData("2001:4860:4860::8888", true)]
    // IPv6 benchmarking (RFC 5180), documentation (RFC 9637, beside 2001:db8::/32) and SRv6 SIDs (RFC 9602): no
    // public host has one, as 198.18.0.0/15 and 2001:db8::/32, though a lab or an internal network may.
    [InlineData("2001:2::1", false)]
    [InlineData("2001:2:0:ffff::1", false)]
    [InlineData("3fff::1", false)]
    [InlineData("3fff:fff:ffff::1", false)]
    [InlineData("3fff:1000::1", true)]
    [InlineData("5f00::1", false)]
    [InlineData("5f00:ffff::1", false)]
    // Their neighbours in the IETF's 2001::/23 are public anycast services (AMT 2001:3::/32, AS112 2001:4:112::/48).
    [InlineData("2001:3::1", true)]
    [InlineData("2001:4:112::1", true)]
    // The deprecated 6to4 relay anycast prefix (RFC 7526; IANA's special-purpose registry: not globally reachable),
    // also inside a 6to4 address; its neighbours are public.
    [InlineData("192.88.99.1", false)]
    [InlineData("192.88.99.255", false)]
    [InlineData("2002:c058:6301::1", false)]
    [InlineData("192.88.98.255", true)]
    [InlineData("192.88.100.1", true)]
    // IANA's IPv6 special-purpose registry, column "globally reachable": the dummy prefix (RFC 9780), the
    // deprecated ORCHID (RFC 4843) and the rest of the IETF's 2001::/23 are not; ORCHIDv2 (RFC 7343), drone
    // entity tags (RFC 9374), the PCP, TURN and DNS-SD anycast addresses and AS112's direct delegation are.
    [InlineData("100:0:0:1::1", false)]
    [InlineData("100:0:0:1:ffff:ffff:ffff:ffff", false)]
    [InlineData("2001:10::1", false)]
    [InlineData("2001:1f:ffff::1", false)]
    [InlineData("2001:5::1", false)]
    [InlineData("2001:1::4", false)]
    [InlineData("2001:1ff::1", false)]
    [InlineData("2001:1::1", true)]
    [InlineData("2001:1::3", true)]
    [InlineData("2001:20::1", true)]
    [InlineData("2001:3f:ffff::1", true)]
    [InlineData("2001:200::1", true)]
    [InlineData("2620:4f:8000::1", true)]
    // Only 2000::/3 is allocated for global unicast (IANA's IPv6 address space); the rest is reserved by the
    // IETF, local or multicast, apart from the forms above that carry an IPv4 address.
    [InlineData("1000::1", false)]
    [InlineData("4000::1", false)]
    [InlineData("e000::1", false)]
    [InlineData("1fff:ffff::1", false)]
    [InlineData("3fff:ffff::1", true)]
    public void Only_public_addresses_count_as_public(string address, bool expected) =>
        Assert.Equal(expected, NetworkAddresses.IsPublic(IPAddress.Parse(address)));

    [Fact]
    public async Task Webhooks_to_internal_addresses_are_refused_before_any_request_and_dead_lettered_after_one_attempt()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Webhooks:AllowPrivateNetworks", "false"),
            ("Consumers:DeliverWebhook:RetryLimit", "3"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3")));
        await using var publisher = await TestPublisher.StartAsync(fixture);

        var port = receiver.BaseAddress.Port;
        var webhooks = await PublishInvoicesAsync(publisher, LoopbackHosts.Select(host => new Uri($"http://{host}:{port}/hooks")));

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var keys = webhooks.Select(w => w.WebhookId.ToString()).ToList();
            var jobs = await db.Jobs.AsNoTracking().Where(j => keys.Contains(j.BusinessKey)).ToListAsync();
            Assert.Equal(LoopbackHosts.Length, jobs.Count);
            Assert.All(jobs, job =>
            {
                Assert.Equal(JobStatus.DeadLettered, job.Status);
                Assert.Equal(1, job.Attempts);
                Assert.Contains("not a public address", job.LastError, StringComparison.Ordinal);
            });
        });
        Assert.Empty(receiver.Deliveries);
    }

    /// <summary>
    /// IPv6 benchmarking, documentation and SRv6 addresses are no public host's, as their IPv4 and 2001:db8::/32
    /// counterparts: refused before any connection and dead-lettered at once, where the connect failed as a network
    /// failure would, retried and redelivered for about an hour (or reached a host of a lab or internal network using them).
    /// </summary>
    [Fact]
    public Task Webhooks_to_ipv6_benchmarking_documentation_and_srv6_addresses_are_refused_as_not_public() =>
        AssertRefusedAsNotPublicAsync("[2001:2::1]", "[3fff::1]", "[5f00::1]");

    /// <summary>
    /// The deprecated 6to4 relay anycast prefix (192.88.99.0/24, RFC 7526) is no public host's since 2015: a relay
    /// still answering there is whichever network's nearest one, often the worker's own provider's. Refused before
    /// any connection and dead-lettered at once, where the worker delivered to whatever answered there (or, with no
    /// answer, retried and redelivered the delivery for about an hour).
    /// </summary>
    [Fact]
    public Task Webhooks_to_the_deprecated_6to4_relay_anycast_prefix_are_refused_as_not_public() =>
        AssertRefusedAsNotPublicAsync("192.88.99.1", "[2002:c058:6301::1]");

    /// <summary>
    /// An internal address written with a final dot, as <c>localhost.</c> is a name with one, is that address: refused
    /// before any connection and dead-lettered at once, where the worker asked DNS for it as a name, which no resolver
    /// has, and retried and redelivered the failed lookup for about an hour.
    /// </summary>
    [Fact]
    public Task Webhooks_to_an_internal_address_with_a_final_dot_are_refused_as_not_public() =>
        AssertRefusedAsNotPublicAsync("10.0.0.5.", "127.0.0.1.");

    /// <summary>
    /// Publishes a webhook to each of <paramref name="hosts"/> (port 8080) to a worker that allows no private network,
    /// and asserts each is refused as not public: dead-lettered after its one attempt, before any connection.
    /// </summary>
    private async Task AssertRefusedAsNotPublicAsync(params string[] hosts)
    {
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Webhooks:AllowPrivateNetworks", "false"),
            ("Consumers:DeliverWebhook:RetryLimit", "3"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3")));
        await using var publisher = await TestPublisher.StartAsync(fixture);

        var webhooks = await PublishInvoicesAsync(publisher, hosts.Select(host => new Uri($"http://{host}:8080/hooks")));

        foreach (var webhook in webhooks)
        {
            var job = await fixture.WaitForJobAsync(webhook.WebhookId.ToString(), JobStatus.DeadLettered, attempts: 1);
            Assert.Contains("not a public address", job.LastError, StringComparison.Ordinal);
        }
    }

    /// <summary>Publishes one <c>invoice.created</c> webhook to each of <paramref name="urls"/>, in order.</summary>
    private static async Task<List<DeliverWebhook>> PublishInvoicesAsync(TestPublisher publisher, IEnumerable<Uri> urls)
    {
        var webhooks = urls.Select(url => new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = url,
            EventType = "invoice.created",
            Payload = JsonDocument.Parse("""{"invoice":7}""").RootElement,
        }).ToList();
        foreach (var webhook in webhooks)
        {
            await publisher.PublishAsync(webhook);
        }

        return webhooks;
    }
}
