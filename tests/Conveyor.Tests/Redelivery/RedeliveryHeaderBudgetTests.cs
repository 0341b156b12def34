using System.Globalization;
using Conveyor.Worker.Jobs;
using Conveyor.Worker.Messaging;
using Conveyor.Worker.Redelivery;
using Microsoft.AspNetCore.DataProtection;

namespace Conveyor.Tests.Redelivery;

/// <summary>
/// How a copy's headers are measured against an endpoint's <c>MaxHeaderBytes</c> and kept within it when
/// stored for a redelivery: the sender's headers count, the worker's own do not, up to an allowance
/// that a sender cannot stretch.
/// </summary>
public sealed class RedeliveryHeaderBudgetTests
{
    private const int Limit = 16_384;

    [Fact]
    public void An_error_queue_moves_headers_at_their_largest_are_not_counted_and_a_sender_cannot_stretch_their_allowance()
    {
        var moved = new Dictionary<string, object?>
        {
            [Contracts.JobHeaders.FaultHistory] = new string('h', Contracts.JobHeaders.MaxFaultHistoryBytes),
            [Contracts.JobHeaders.MovedFrom] = new string('q', 255),
            [Contracts.JobHeaders.MovedByOperation] = Guid.NewGuid().ToString(),
        };
        Assert.True(AmqpFrame.TableBytes(moved) <= RedeliveryHeaders.MoveAllowance, $"{AmqpFrame.TableBytes(moved)} bytes");
        Assert.Equal(0, RedeliveryHeaders.CountedBytes(moved));

        moved[Contracts.JobHeaders.FaultHistory] = new string('h', RedeliveryHeaders.MoveAllowance + 1_000);
        Assert.True(RedeliveryHeaders.CountedBytes(moved) >= 1_000);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void The_workers_own_headers_at_their_largest_fit_in_their_allowance(bool longJob)
    {
        var seal = new RedeliverySeal(new EphemeralDataProtectionProvider());
        var firstFailureAt = DateTimeOffset.MaxValue.ToString("O", CultureInfo.InvariantCulture);
        // A business key as long as the jobs table keeps one, and an error of three-byte characters.
        var key = new string('k', 200);
        var headers = new Dictionary<string, object?>
        {
            [RedeliveryHeaders.Attempt] = int.MaxValue.ToString(CultureInfo.InvariantCulture),
            [RedeliveryHeaders.FirstFailureAt] = firstFailureAt,
            [RedeliverySeal.Header] = seal.Seal("charge-payment", key, int.MaxValue, firstFailureAt),
            [RedeliveryHeaders.LastError] = JobTracker.Describe(new InvalidOperationException(new string('€', 2_000)), 500),
            [OversizedHeaders.DroppedHeader] = new string('d', OversizedHeaders.MaxNoteBytes),
            [RabbitMQ.Client.Constants.PublishSequenceNumberHeader] = long.MaxValue,
        };
        // Each endpoint's copies carry one sealed count of their own: a long job's times parked behind another
        // worker's lease (the lease inbox), a webhook's times set aside for its origin's limit (DeliverWebhook).
        if (longJob)
        {
            headers[RedeliveryHeaders.Deferrals] = int.MaxValue.ToString(CultureInfo.InvariantCulture);
            headers[RedeliverySeal.LeaseDeferralsHeader] = seal.SealLeaseDeferrals("generate-report", key, int.MaxValue);
        }
        else
        {
            headers[RedeliveryHeaders.OriginDeferrals] = int.MaxValue.ToString(CultureInfo.InvariantCulture);
            headers[RedeliverySeal.OriginDeferralsHeader] = seal.SealOriginDeferrals("deliver-webhook", key, int.MaxValue);
        }

        Assert.True(AmqpFrame.TableBytes(headers) <= RedeliveryHeaders.OwnAllowance, $"{AmqpFrame.TableBytes(headers)} bytes");
        Assert.Equal(0, RedeliveryHeaders.CountedBytes(headers));
    }

    [Fact]
    public void The_workers_own_headers_are_left_out_in_any_casing_only_up_to_their_allowance()
    {
        var pad = new KeyValuePair<string, object?>("X-Pad", new string('p', 1_000));
        var padBytes = AmqpFrame.EntryBytes(pad.Key, pad.Value);
        var modest = new KeyValuePair<string, object?>("conveyor-last-error", new string('e', 1_000));
        var stuffed = new KeyValuePair<string, object?>("CONVEYOR-LAST-ERROR", new string('e', 10_000));

        Assert.Equal(padBytes, RedeliveryHeaders.CountedBytes([pad, modest]));
        Assert.Equal(padBytes + AmqpFrame.EntryBytes(stuffed.Key, stuffed.Value) - RedeliveryHeaders.OwnAllowance,
            RedeliveryHeaders.CountedBytes([pad, stuffed]));
    }

    [Fact]
    public void A_stored_copy_keeps_every_header_of_a_command_within_the_limit_with_the_workers_own_on_top()
    {
        var received = new Dictionary<string, string> { ["X-Pad"] = new string('p', Limit - 100), ["X-Small"] = "s" };

        var stored = RedeliveryStore.StorableHeaders(received, WorkersOwn(), Limit);

        Assert.Equal(received["X-Pad"], stored["X-Pad"]);
        Assert.Equal("s", stored["X-Small"]);
        Assert.False(stored.ContainsKey(OversizedHeaders.DroppedHeader));
        Assert.True(AmqpFrame.TableBytes(stored) > Limit, "the worker's own headers came on top");
        Assert.True(RedeliveryHeaders.CountedBytes(stored) <= Limit);
    }

    [Fact]
    public void A_header_that_grew_past_the_limit_as_it_was_stored_is_dropped_and_named_so_the_copy_still_passes()
    {
        // Within the limit as bytes that are no UTF-8; stored as text, each became three.
        var received = new Dictionary<string, string> { ["X-Binary"] = new string('\uFFFD', Limit / 2), ["X-Small"] = "s" };

        var stored = RedeliveryStore.StorableHeaders(received, WorkersOwn(), Limit);

        Assert.False(stored.ContainsKey("X-Binary"));
        Assert.StartsWith("X-Binary (", (string?)stored[OversizedHeaders.DroppedHeader], StringComparison.Ordinal);
        Assert.Equal("s", stored["X-Small"]);
        Assert.All(WorkersOwn(), own => Assert.Equal(own.Value, stored[own.Key]));
        Assert.True(RedeliveryHeaders.CountedBytes(stored) <= Limit);
    }

    [Fact]
    public void A_senders_headers_under_the_workers_own_names_replace_none_of_the_workers_and_cannot_grow_the_stored_copy()
    {
        var received = new Dictionary<string, string>
        {
            ["X-Pad"] = new string('p', 60_000),
            ["CONVEYOR-REDELIVERY-SEAL"] = "forged",
            [RedeliveryHeaders.Deferrals] = new string('9', 70_000),
        };

        var stored = RedeliveryStore.StorableHeaders(received, WorkersOwn(), RedeliveryStore.MaxStoredHeaderBytes);

        Assert.DoesNotContain("CONVEYOR-REDELIVERY-SEAL", stored.Keys);
        Assert.All(WorkersOwn(), own => Assert.Equal(own.Value, stored[own.Key]));
        Assert.False(stored.ContainsKey(RedeliveryHeaders.Deferrals));
        Assert.True(AmqpFrame.TableBytes(stored) <= RedeliveryStore.MaxStoredHeaderBytes + RedeliveryHeaders.OwnAllowance);
    }

    [Fact]
    public void A_retry_of_a_copy_parked_behind_a_lease_starts_its_count_of_parks_from_none_as_a_park_carries_its_own()
    {
        // A copy parked behind another worker's lease, which then ran and failed: its retry is a new attempt, and its
        // MaxLeaseDeferrals counts that attempt's parks, as Webhooks:MaxOriginDeferrals counts an attempt's times aside.
        var seal = new RedeliverySeal(new EphemeralDataProtectionProvider());
        var received = new Dictionary<string, string>
        {
            ["X-Small"] = "s",
            [RedeliveryHeaders.Deferrals] = "60",
            [RedeliverySeal.LeaseDeferralsHeader] = seal.SealLeaseDeferrals("generate-report", "key", 60),
        };

        var retry = RedeliveryStore.StorableHeaders(received, WorkersOwn(), Limit);

        Assert.Equal("s", retry["X-Small"]);
        Assert.All(WorkersOwn(), own => Assert.Equal(own.Value, retry[own.Key]));
        Assert.DoesNotContain(retry.Keys, k => string.Equals(k, RedeliveryHeaders.Deferrals, StringComparison.OrdinalIgnoreCase));
        Assert.DoesNotContain(retry.Keys, k => string.Equals(k, RedeliverySeal.LeaseDeferralsHeader, StringComparison.OrdinalIgnoreCase));

        // Parked once more, the copy carries the count its park sealed.
        var parkSeal = seal.SealLeaseDeferrals("generate-report", "key", 61);
        var park = RedeliveryStore.StorableHeaders(
            received, new Dictionary<string, string> { [RedeliveryHeaders.Deferrals] = "61", [RedeliverySeal.LeaseDeferralsHeader] = parkSeal }, Limit);

        Assert.Equal(("61", parkSeal), (park[RedeliveryHeaders.Deferrals], park[RedeliverySeal.LeaseDeferralsHeader]));
    }

    /// <summary>What the redelivery filter adds to a stored copy, at a realistic size.</summary>
    private static Dictionary<string, string> WorkersOwn() => new()
    {
        [RedeliveryHeaders.Attempt] = "1",
        [RedeliveryHeaders.FirstFailureAt] = "2026-12-01T12:00:00.0000000+00:00",
        [RedeliverySeal.Header] = new string('s', 262),
        [RedeliveryHeaders.LastError] = "TransientFailureException: The payment gateway answered 503 ServiceUnavailable: " + new string('b', 400),
    };
}
