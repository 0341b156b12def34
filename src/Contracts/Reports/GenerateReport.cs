namespace Conveyor.Contracts.Reports;

/// <summary>
/// Aggregate the payment ledger into a report. A long job: it walks the ledger in
/// <see cref="PageSize"/>-row pages and reports progress as it goes.
/// <see cref="ReportId"/> is the business idempotency key.
/// </summary>
public sealed record GenerateReport
{
    public required Guid ReportId { get; init; }

    /// <summary>Only this account's charges; all accounts when null.</summary>
    public string? AccountId { get; init; }

    /// <summary>Only this ISO 4217 currency; all currencies when null.</summary>
    public string? Currency { get; init; }

    /// <summary>Rows per page (1..10000); smaller pages mean more progress updates.</summary>
    public int? PageSize { get; init; }

    /// <summary>What breaks the rules of <see cref="ContractRules"/>; empty when the command is valid.</summary>
    public IReadOnlyList<ContractViolation> Validate() => ContractViolation.Collect(
        ("reportId", ContractRules.Id(ReportId)),
        ("accountId", AccountId is null ? null : ContractRules.AccountId(AccountId)),
        ("currency", Currency is null ? null : ContractRules.Currency(Currency)),
        ("pageSize", PageSize is { } pageSize ? ContractRules.InRange(pageSize, 1, ContractRules.MaxPageSize) : null));
}
