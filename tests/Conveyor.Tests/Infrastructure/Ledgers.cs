using Conveyor.Storage.Payments;

namespace Conveyor.Tests.Infrastructure;

/// <summary>Charges in the ledger for a report to scan.</summary>
public static class Ledgers
{
    /// <summary>
    /// Writes <paramref name="rows"/> charges of <paramref name="account"/> in EUR, of 1 to <paramref name="rows"/> minor
    /// units, each under a new payment id.
    /// </summary>
    public static async Task SeedLedgerAsync(this ConveyorFixture fixture, string account, int rows)
    {
        await using var db = fixture.CreateDbContext();
        db.Ledger.AddRange(Enumerable.Range(1, rows).Select(i => new LedgerEntry
        {
            PaymentId = Guid.NewGuid(),
            AccountId = account,
            AmountMinor = i,
            Currency = "EUR",
            GatewayChargeId = $"ch_{i}",
            ChargedAt = DateTimeOffset.UtcNow,
        }));
        await db.SaveChangesAsync();
    }
}
